"""Naive (sequential) vs per-modality balanced packing for a DP x micro-batch layout.

    python tools/balance_report.py                                  # skewed text/image/speech mix, 8 x 8 x 4096
    python tools/balance_report.py --docs my_profiles.jsonl --dp 16 --micro-batches 4 --seq-len 8192
    python tools/balance_report.py --config configs/demo_cpu.yaml   # the config's corpus and layout
    python tools/balance_report.py --json | --plot balance.png

--docs takes length profiles, one document per line: {"segments": [["text", 37], ["image", 1024]]},
so a corpus mix can be studied without tokens. Reported per packer, worst over --steps global batches:
  max_over_mean   per modality: max over cells of its tokens / mean over cells (1.0 = perfectly even);
  padding_fraction  padded positions / all positions;
  step_time_ratio   slowest cell / mean cell under the cost model: per modality, a grouped-GEMM slice
                    costs its tokens + 128 (small-GEMM overhead) when non-empty, plus document-masked
                    attention sum(len^2) x 2h / (GEMM FLOPs per token) (h, FFN from the config, else
                    the paper's 7B: 4096 / 11008). Each rank waits for the slowest cell of the step.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import positive_int, user_errors  # noqa: E402
from mot_parallel.data.corpus import SegmentTable  # noqa: E402
from mot_parallel.data.packing import batch_stats, pack_balanced, pack_sequential  # noqa: E402
from mot_parallel.data.profiles import modalities_of, read_profiles, skewed_mix  # noqa: E402
from mot_parallel.data.stream import DocumentStream  # noqa: E402


def attention_weight(hidden: int, ffn: int, heads_dim_total: int = None) -> float:
    """Cost of one unit of sum(len^2) in GEMM-token units: 2h (causal QK^T + AV) / GEMM FLOPs per token."""
    gemm = 2 * (4 * hidden * hidden + 3 * hidden * ffn)
    return 2.0 * (heads_dim_total or hidden) / gemm


def run(table, layout, steps, seed, weight):
    out = {}
    for name, pack in (("naive", pack_sequential), ("balanced", pack_balanced)):
        stream = DocumentStream(table, layout["seq_len"], seed)
        worst = None
        cells = None
        for _ in range(steps):
            batch = pack(stream, layout["dp"] * layout["micro_batches"], layout["micro_batch_size"],
                         layout["seq_len"])
            s = batch_stats(batch, table, attention_weight=weight)
            if worst is None:
                worst, cells = s, batch.cell_vectors(table)
            else:
                worst["max_over_mean"] = {k: max(v, s["max_over_mean"][k]) for k, v in worst["max_over_mean"].items()}
                worst["padding_fraction"] = max(worst["padding_fraction"], s["padding_fraction"])
                worst["step_time_ratio"] = max(worst["step_time_ratio"], s["step_time_ratio"])
        out[name] = {k: (round(v, 4) if isinstance(v, float) else {m: round(x, 4) for m, x in v.items()})
                     for k, v in worst.items()}
        out[name]["_cells"] = cells
    return out


def plot(result, modalities, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    for ax, name in zip(axes, ("naive", "balanced")):
        cells = result[name]["_cells"]
        bottom = np.zeros(len(cells))
        for m, mod in enumerate(modalities):
            ax.bar(range(len(cells)), cells[:, m], bottom=bottom, label=mod)
            bottom += cells[:, m]
        ax.set_title(f"{name}: tokens per modality per (rank, micro-batch) cell")
        ax.set_ylabel("tokens")
    axes[0].legend(loc="upper right")
    axes[1].set_xlabel("cell")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="take the corpus, modalities and layout defaults from a config")
    ap.add_argument("--docs", help="length-profile JSONL (else the config's corpus, else a skewed synthetic mix)")
    ap.add_argument("--dp", type=positive_int)
    ap.add_argument("--micro-batches", type=positive_int,
                    help="micro-batches per step per rank (gradient accumulation)")
    ap.add_argument("--micro-batch-size", type=positive_int, help="sequences per micro-batch")
    ap.add_argument("--seq-len", type=positive_int)
    ap.add_argument("--steps", type=positive_int, default=4, help="global batches to pack (worst case reported)")
    ap.add_argument("--documents", type=positive_int, default=20000, help="size of the synthetic mix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", help="write a per-cell stacked bar chart (PNG)")
    args = ap.parse_args(argv)
    layout = {"dp": 8, "micro_batches": 8, "micro_batch_size": 1, "seq_len": 4096}
    weight = attention_weight(4096, 11008)
    cfg = None
    if args.config:
        from mot_parallel.config import ConfigError, ffn_hidden_size, load_config, validate
        try:
            cfg = load_config(args.config)
            world = (args.dp or 1) * cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
            lay = validate(cfg, world)
        except ConfigError as e:
            sys.exit(f"error: {e}")
        layout = {"dp": lay.dp, "micro_batches": lay.grad_accum, "micro_batch_size": lay.micro_batch_size,
                  "seq_len": cfg.model.max_seq_len}
        weight = attention_weight(cfg.model.hidden_size, ffn_hidden_size(cfg))
    for key, value in (("dp", args.dp), ("micro_batches", args.micro_batches),
                       ("micro_batch_size", args.micro_batch_size), ("seq_len", args.seq_len)):
        if value:
            layout[key] = value
    if args.docs:
        with user_errors():
            docs = read_profiles(args.docs)
            mods = cfg.model.modalities if cfg else modalities_of(docs)
            table = SegmentTable.from_profiles(docs, mods, atomic=["image"] if "image" in mods else [])
        source = args.docs
    elif cfg is not None:
        from mot_parallel.data.from_config import open_corpus
        with user_errors():
            table = open_corpus(cfg)
        mods, source = cfg.model.modalities, table.prefix
    else:
        docs = skewed_mix(args.documents, args.seed)
        mods = ["text", "image", "speech"]
        table = SegmentTable.from_profiles(docs, mods, atomic=["image"])
        source = f"skewed_mix({args.documents}, seed={args.seed})"
    result = run(table, layout, args.steps, args.seed, weight)
    if args.plot:
        plot(result, mods, args.plot)
    for name in ("naive", "balanced"):
        result[name].pop("_cells")
    if args.json:
        print(json.dumps(dict(result, layout=layout, source=source), indent=1))
        return
    print(f"{source}: DP {layout['dp']} x {layout['micro_batches']} micro-batches x {layout['micro_batch_size']} "
          f"seq x {layout['seq_len']} tokens, worst of {args.steps} global batches")
    print(f"{'packer':9} " + " ".join(f"{'max/mean ' + m:>17}" for m in mods) + f" {'padding':>8} {'step time':>10}")
    for name in ("naive", "balanced"):
        r = result[name]
        print(f"{name:9} " + " ".join(f"{r['max_over_mean'][m]:>17.3f}" for m in mods) +
              f" {r['padding_fraction']:>8.2%} {r['step_time_ratio']:>10.3f}")
    if args.plot:
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
