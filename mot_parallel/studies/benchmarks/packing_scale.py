"""What planning a balanced global batch costs one rank as the data-parallel size grows, and how even the
plan stays (tools/balance_report.py --scaling).

A rank's planning work per step is what its loader thread does before reading tokens: plan the global batch
(every rank plans it, from metadata), count its training targets (the loss normaliser) and take out its own
cells. Wall and CPU time are both reported: on a busy machine wall time grows with the load, the CPU time
the rank spends does not. The carry-over's memory is what the stream holds between steps: five int64 per
piece as arrays, and the JSON the loader state takes in a checkpoint.
"""
from __future__ import annotations

import json
import time
import warnings
from typing import Dict, List

import numpy as np

from ...data.balance import batch_stats
from ...data.corpus import SegmentTable
from ...data.packing import PackingWarning, pack_balanced
from ...data.stream import DocumentStream


def _rank_step(stream: DocumentStream, table: SegmentTable, layout: dict, rank: int):
    """One step of rank `rank`'s planning: (global batch, wall s, CPU s)."""
    wall, cpu = time.perf_counter(), time.process_time()
    k = layout["micro_batches"]
    batch = pack_balanced(stream, layout["dp"] * k, layout["micro_batch_size"], layout["seq_len"])
    batch.label_vector(table)
    for c in range(rank * k, (rank + 1) * k):
        batch.cell(c)
    return batch, time.perf_counter() - wall, time.process_time() - cpu


def carry_memory(stream: DocumentStream) -> Dict[str, int]:
    """The carry-over: pieces, tokens, bytes as arrays, bytes of its JSON (the checkpointed state)."""
    state = stream.state_dict()
    return {"pieces": len(state["carry"]), "tokens": stream.carry_tokens, "array_bytes": 40 * len(state["carry"]),
            "json_bytes": len(json.dumps(state))}


def scaling_point(table: SegmentTable, layout: dict, steps: int, seed: int, weight: float) -> dict:
    """Plan `steps` global batches at one layout: plan ms per rank (mean, worst; wall and CPU), the worst
    balance of the steps (max/mean and bound per modality, padding), carry-over (worst) and its memory."""
    stream = DocumentStream(table, layout["seq_len"], seed)
    rng = np.random.default_rng(seed)
    wall, cpu, carry, worst = [], [], [], None
    capacity = layout["dp"] * layout["micro_batches"] * layout["micro_batch_size"] * layout["seq_len"]
    memory = {"tokens": -1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PackingWarning)  # the report shows the values themselves
        for _ in range(steps):
            batch, w, c = _rank_step(stream, table, layout, int(rng.integers(layout["dp"])))
            wall.append(w)
            cpu.append(c)
            carry.append(stream.carry_tokens)
            if carry[-1] > memory["tokens"]:
                memory = carry_memory(stream)
            worst = _worse(worst, batch_stats(batch, table, attention_weight=weight))
    ms = lambda xs: {"mean": round(1e3 * float(np.mean(xs)), 1), "max": round(1e3 * max(xs), 1)}  # noqa: E731
    return {"layout": dict(layout), "plan_ms": ms(wall), "plan_cpu_ms": ms(cpu),
            "max_over_mean": worst["max_over_mean"], "bound": worst["bound"], "over_bound": worst["over_bound"],
            "padding_fraction": worst["padding_fraction"], "step_time_ratio": worst["step_time_ratio"],
            "carry": {"max_tokens": int(max(carry)), "max_in_batches": round(max(carry) / capacity, 3),
                      "worst_memory": memory}}


def _worse(worst, s) -> dict:
    s = {"max_over_mean": {m: round(v, 4) for m, v in s["max_over_mean"].items()},
         "bound": {m: round(v, 4) for m, v in s["bound"].items()},
         "over_bound": {m: round(v - s["bound"][m], 4) for m, v in s["max_over_mean"].items()},
         "padding_fraction": round(s["padding_fraction"], 5), "step_time_ratio": round(s["step_time_ratio"], 4)}
    if worst is None:
        return s
    for key in ("max_over_mean", "bound", "over_bound"):
        s[key] = {m: max(v, worst[key][m]) for m, v in s[key].items()}
    for key in ("padding_fraction", "step_time_ratio"):
        s[key] = max(s[key], worst[key])
    return s


def scaling(table: SegmentTable, layout: dict, dp_sizes: List[int], steps: int, seed: int, weight: float) -> list:
    with warnings.catch_warnings():  # one untimed step first: first-call costs are not a step's
        warnings.simplefilter("ignore", PackingWarning)
        _rank_step(DocumentStream(table, layout["seq_len"], seed + 1), table, dict(layout, dp=min(dp_sizes)), 0)
    return [scaling_point(table, dict(layout, dp=dp), steps, seed, weight) for dp in dp_sizes]
