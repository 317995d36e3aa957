"""Markdown tables for tools/fidelity_study.py: final losses of a grid of runs, and the crossing fractions of the
study (MoT and FFN-only vs dense, per modality and seed) with their spread.

Every number comes from a run directory's metrics.jsonl (and compare_runs for the crossings), so a table is
regenerated from the runs alone (`tools/fidelity_study.py SUITE --report`).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from typing import Dict, List, Optional, Sequence

from .crossing import compare_runs
from .run_curves import load_run


def read_metrics(run_dir: str) -> Dict[str, List[Dict]]:
    out: Dict[str, List[Dict]] = {"train": [], "valid": []}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[rec.get("kind", "train")].append(rec)
    return out


def final_losses(run_dir: str, modalities: Sequence[str], last: int = 4) -> Dict[str, Optional[float]]:
    """valid/<m>: the final evaluation's loss; train/<m>: the training loss averaged over the last `last`
    logged steps (the issue-16 table's measure); plus the diagnostics of the last logged step, if any
    (max attention logit over layers per (query, key) pair, and the run's peak of it)."""
    recs = read_metrics(run_dir)
    out: Dict[str, Optional[float]] = {}
    final = recs["valid"][-1] if recs["valid"] else {}
    out["valid/overall"] = final.get("valid/loss")
    for m in modalities:
        out[f"valid/{m}"] = final.get(f"valid/loss/{m}")
        vals = [r[f"loss/{m}"] for r in recs["train"][-last:] if r.get(f"loss/{m}") is not None]
        out[f"train/{m}"] = sum(vals) / len(vals) if vals else None
    diag = [r for r in recs["train"] if any(k.startswith("diag/max_logit/") for k in r)]
    if diag:
        pairs = [k for k in diag[-1] if k.startswith("diag/max_logit/") and "layer" not in k]
        for k in pairs:
            out[f"logit_end/{k[15:]}"] = diag[-1][k]
            seen = [r[k] for r in diag if r.get(k) is not None]
            out[f"logit_peak/{k[15:]}"] = max(seen) if seen else None
        for k in (k for k in diag[-1] if k.startswith("diag/update/") or k.startswith("diag/grad_norm/")):
            out[k[5:]] = diag[-1][k]
    return out


def _cell(values: Sequence[Optional[float]], digits: int = 3) -> str:
    return " / ".join("n/a" if v is None else f"{v:.{digits}f}" for v in values)


def grid_table(rows: Sequence[tuple], modalities: Sequence[str], measure: str = "valid") -> str:
    """rows: (label, [run_dir per seed]) -> markdown: one column per modality, 'seed a / seed b' per cell."""
    head = f"| variant | {' | '.join(modalities)} |\n|---|{'---|' * len(modalities)}\n"
    lines = []
    for label, dirs in rows:
        got = [final_losses(d, modalities) for d in dirs if os.path.isfile(os.path.join(d, "metrics.jsonl"))]
        cells = [_cell([g.get(f"{measure}/{m}") for g in got]) for m in modalities]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return head + "\n".join(lines) + "\n"


def logit_table(rows: Sequence[tuple], pairs: Sequence[str]) -> str:
    """Max attention logit (over layers) per (query-key) pair at the last logged step, and its peak over the run."""
    head = f"| variant | {' | '.join(f'{p} end (peak)' for p in pairs)} |\n|---|{'---|' * len(pairs)}\n"
    lines = []
    for label, dirs in rows:
        got = [final_losses(d, []) for d in dirs if os.path.isfile(os.path.join(d, "metrics.jsonl"))]
        cells = [" / ".join(_fmt_pair(g, p) for g in got) for p in pairs]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return head + "\n".join(lines) + "\n"


def _fmt_pair(g: Dict, pair: str) -> str:
    end, peak = g.get(f"logit_end/{pair}"), g.get(f"logit_peak/{pair}")
    return "n/a" if end is None else f"{end:.1f} ({peak:.1f})"


def study_fractions(seeds: Dict[int, Dict[str, str]], reference: str = "dense") -> Dict:
    """seeds: {seed: {label: run_dir}} (the reference's label first) -> per seed the compare_runs result, and
    per (label, modality, axis) the fractions over seeds."""
    per_seed, fractions = {}, {}
    for seed, runs in seeds.items():
        labels = [reference] + [k for k in runs if k != reference]
        result = compare_runs([load_run(runs[k]) for k in labels], labels)
        per_seed[seed] = result
        for block in result["blocks"]:
            for r in block["rows"][1:]:
                for axis in ("step", "flops", "time_s"):
                    f = r["fraction"][axis] if r["reached"] else None
                    fractions.setdefault((r["label"], block["name"], axis), []).append(f)
    return {"per_seed": per_seed, "fractions": fractions}


def spread(values: Sequence[Optional[float]]) -> str:
    """'0.62 (0.58-0.66)': mean and range over seeds; 'not reached' counts are said."""
    got = [v for v in values if v is not None]
    missed = len(values) - len(got)
    if not got:
        return "not reached"
    text = f"{statistics.mean(got):.2f}" + (f" ({min(got):.2f}-{max(got):.2f})" if len(got) > 1 else "")
    return text + (f", {missed} not reached" if missed else "")


def fraction_table(fractions: Dict, labels: Sequence[str], blocks: Sequence[str], axis: str = "step") -> str:
    head = f"| run | {' | '.join(blocks)} |\n|---|{'---|' * len(blocks)}\n"
    lines = []
    for label in labels:
        cells = [spread(fractions.get((label, b, axis), [])) for b in blocks]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return head + "\n".join(lines) + "\n"


def finite(x) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(float(x)) else None
