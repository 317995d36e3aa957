"""Naive (sequential) vs per-modality balanced packing for a DP x micro-batch layout, over many steps.

    python tools/balance_report.py                                  # heavy-tailed mix, 8 x 8 x 4096, 16 steps
    python tools/balance_report.py --mix skewed --steps 128         # the skewed mix; carry-over over 128 steps
    python tools/balance_report.py --mix long-images                # images as long as a sequence
    python tools/balance_report.py --docs my_profiles.jsonl --dp 16 --micro-batches 4 --seq-len 8192
    python tools/balance_report.py --config configs/demo_cpu.yaml   # the config's corpus and layout
    python tools/balance_report.py --json | --plot balance.png
    python tools/balance_report.py --scaling 8,32,128,512 --steps 4   # plan cost per rank as DP grows

--docs takes length profiles, one document per line: {"segments": [["text", 37], ["image", 1024]]},
so a corpus mix can be studied without tokens. Synthetic mixes (--mix, mot_parallel/corpus_building/profiles.py):
`heavy` (log-normal text up to a sequence, a third of documents with one or two 1,024-token captioned
images, speech with transcripts), `skewed` (separate text / image / speech documents) and `long-images`
(image-heavy, a tenth of the images as long as a sequence, Pareto text, rare speech).
Reported per packer, over --steps consecutive global batches:
  max/mean          per modality, worst step: max over cells of its tokens / mean over cells (1.0 = even);
  bound             per modality, worst step: the lower bound on max/mean for that step's pieces (atomic
                    pieces land whole in one cell; mot_parallel/data/balance.py); max/mean can't beat it;
  over bound        per modality, worst step: max/mean - bound (0 = the best split of that step's pieces);
  padding           worst step: padded positions / all positions;
  step time         worst step: slowest cell / mean cell under the cost model: per modality, a grouped-GEMM
                    slice costs its tokens + 128 (small-GEMM overhead) when non-empty, plus document-masked
                    attention sum(len^2) x 2h / (GEMM FLOPs per token) (h, FFN from the config, else the
                    paper's 7B: 4096 / 11008). Each rank waits for the slowest cell of the step;
  carry             tokens waiting in the stream's carry-over after a step: max over all steps and over the
                    last half (no growth: the two stay alike), in tokens and in global batches;
  plan ms           wall time to plan one global batch (mean, max), what the loader's thread spends per step.

--scaling DP1,DP2,...: the balanced packer alone at each data-parallel size (the other layout values as
given): plan ms per rank per step (mean and worst over --steps; wall and CPU time: planning the global batch,
counting its training targets, taking out the rank's own cells), the worst max/mean, bound, padding and
step time of those steps, the worst carry-over (tokens, global batches) and its memory (arrays; the JSON
the loader state takes in a checkpoint). mot_parallel/studies/benchmarks/packing_scale.py.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.data.balance import batch_stats  # noqa: E402
from mot_parallel.cli import add_overwrite, int_in, positive_int_list, seed, user_errors  # noqa: E402
from mot_parallel.studies.png_files import check_png, save_png  # noqa: E402
from mot_parallel.data.corpus import SegmentTable  # noqa: E402
from mot_parallel.data.packing import pack_balanced, pack_sequential  # noqa: E402
from mot_parallel.corpus_building.profiles import MIXES, modalities_of, read_profiles  # noqa: E402
from mot_parallel.data.stream import DocumentStream  # noqa: E402



def attention_weight(hidden: int, ffn: int, heads_dim_total: int = None) -> float:
    """Cost of one unit of sum(len^2) in GEMM-token units: 2h (causal QK^T + AV) / GEMM FLOPs per token."""
    gemm = 2 * (4 * hidden * hidden + 3 * hidden * ffn)
    return 2.0 * (heads_dim_total or hidden) / gemm


def run_packer(pack, table, layout, steps, seed, weight):
    """Pack `steps` global batches; the worst of each metric, carry-over and planning time."""
    stream = DocumentStream(table, layout["seq_len"], seed)
    n_cells, capacity = layout["dp"] * layout["micro_batches"], None
    worst, carry, plan_s, first_cells = None, [], [], None
    for _ in range(steps):
        t = time.perf_counter()
        batch = pack(stream, n_cells, layout["micro_batch_size"], layout["seq_len"])
        plan_s.append(time.perf_counter() - t)
        carry.append(stream.carry_tokens)
        s = batch_stats(batch, table, attention_weight=weight)
        s["over_bound"] = {m: s["max_over_mean"][m] - s["bound"][m] for m in s["bound"]}
        if worst is None:
            worst, first_cells = s, batch.cell_vectors(table)
            capacity = n_cells * layout["micro_batch_size"] * layout["seq_len"]
            continue
        for key in ("max_over_mean", "bound", "over_bound"):
            worst[key] = {m: max(v, s[key][m]) for m, v in worst[key].items()}
        for key in ("padding_fraction", "step_time_ratio"):
            worst[key] = max(worst[key], s[key])
    out = {k: (round(v, 4) if isinstance(v, float) else {m: round(x, 4) for m, x in v.items()})
           for k, v in worst.items()}
    late = carry[len(carry) // 2:]
    out["carry_tokens"] = {"max": int(max(carry)), "max_last_half": int(max(late)), "last": int(carry[-1]),
                           "max_in_batches": round(max(carry) / capacity, 3)}
    out["plan_ms"] = {"mean": round(1000 * float(np.mean(plan_s)), 1), "max": round(1000 * max(plan_s), 1)}
    return out, first_cells, carry


def run(table, layout, steps, seed, weight):
    result, extras = {}, {}
    for name, pack in (("naive", pack_sequential), ("balanced", pack_balanced)):
        result[name], cells, carry = run_packer(pack, table, layout, steps, seed, weight)
        extras[name] = (cells, carry)
    return result, extras


def plot(extras, modalities, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 1, figsize=(12, 9))
    for ax, name in zip(axes, ("naive", "balanced")):
        cells = extras[name][0]
        bottom = np.zeros(len(cells))
        for m, mod in enumerate(modalities):
            ax.bar(range(len(cells)), cells[:, m], bottom=bottom, label=mod)
            bottom += cells[:, m]
        ax.set_title(f"{name}: tokens per modality per (rank, micro-batch) cell, first global batch")
        ax.set_ylabel("tokens")
        ax.set_xlabel("cell")
    axes[0].legend(loc="upper right")
    for name in ("naive", "balanced"):
        axes[2].plot(extras[name][1], label=name)
    axes[2].set_title("carry-over after each step")
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("tokens")
    axes[2].legend()
    fig.tight_layout()
    save_png(fig, path, "balance_report plot", dpi=100)


def print_table(result, mods, layout, steps, source):
    print(f"{source}: DP {layout['dp']} x {layout['micro_batches']} micro-batches x {layout['micro_batch_size']} "
          f"seq x {layout['seq_len']} tokens, worst of {steps} global batches")
    cols = [f"{kind} {m}" for kind in ("max/mean", "bound", "over bound") for m in mods]
    print(f"{'packer':9} " + " ".join(f"{c:>17}" for c in cols) +
          f" {'padding':>8} {'step time':>10} {'carry max':>10} {'last half':>10} {'plan ms':>8}")
    for name in ("naive", "balanced"):
        r = result[name]
        vals = [r[key][m] for key in ("max_over_mean", "bound", "over_bound") for m in mods]
        print(f"{name:9} " + " ".join(f"{v:>17.3f}" for v in vals) +
              f" {r['padding_fraction']:>8.2%} {r['step_time_ratio']:>10.3f} {r['carry_tokens']['max']:>10}"
              f" {r['carry_tokens']['max_last_half']:>10} {r['plan_ms']['mean']:>8.1f}")


MAX_SCALING_DP = 65536


def print_scaling(points, mods, source, steps):
    lay = points[0]["layout"]
    print(f"{source}: balanced packer, DP x {lay['micro_batches']} micro-batches x {lay['micro_batch_size']} seq x "
          f"{lay['seq_len']} tokens, worst of {steps} global batches; plan ms per rank per step")
    cols = [f"max/mean {m}" for m in mods] + [f"over bound {m}" for m in mods]
    print(f"{'DP':>6} {'cells':>6} {'plan ms':>8} {'worst':>8} {'cpu ms':>7} {'worst':>7} " +
          " ".join(f"{c:>17}" for c in cols) + f" {'padding':>8} {'carry max':>10} {'batches':>8} {'carry MB':>9}")
    for p in points:
        lay, carry = p["layout"], p["carry"]
        vals = [p["max_over_mean"][m] for m in mods] + [p["over_bound"][m] for m in mods]
        print(f"{lay['dp']:>6} {lay['dp'] * lay['micro_batches']:>6} {p['plan_ms']['mean']:>8.1f} "
              f"{p['plan_ms']['max']:>8.1f} {p['plan_cpu_ms']['mean']:>7.1f} {p['plan_cpu_ms']['max']:>7.1f} " +
              " ".join(f"{v:>17.3f}" for v in vals) + f" {p['padding_fraction']:>8.2%} {carry['max_tokens']:>10} "
              f"{carry['max_in_batches']:>8.3f} {carry['worst_memory']['json_bytes'] / 2 ** 20:>9.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="take the corpus, modalities and layout defaults from a config")
    ap.add_argument("--docs", help="length-profile JSONL (else the config's corpus, else a synthetic mix)")
    ap.add_argument("--mix", choices=sorted(MIXES), default="heavy", help="the synthetic mix (default heavy)")
    ap.add_argument("--dp", type=int_in(1, 1 << 16))
    ap.add_argument("--micro-batches", type=int_in(1, 1 << 12),
                    help="micro-batches per step per rank (gradient accumulation)")
    ap.add_argument("--micro-batch-size", type=int_in(1, 1 << 12), help="sequences per micro-batch")
    ap.add_argument("--seq-len", type=int_in(2, 1 << 22), help="tokens per sequence (a next-token target needs 2)")
    ap.add_argument("--steps", type=int_in(1, 100000), default=16, help="global batches to pack (worst case reported)")
    ap.add_argument("--documents", type=int_in(1, 10 ** 7), default=40000, help="size of the synthetic mix")
    ap.add_argument("--seed", type=seed, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--plot", help="write per-cell stacked bar charts and the carry-over curve (PNG)")
    ap.add_argument("--scaling", type=positive_int_list, metavar="DP,DP,...",
                    help="plan cost per rank and balance at each of these data-parallel sizes (e.g. 8,32,128,512)")
    add_overwrite(ap)
    args = ap.parse_args(argv)
    if args.scaling and (args.dp or args.plot):
        sys.exit(f"error: --scaling {','.join(map(str, args.scaling))} sets the data-parallel sizes itself; "
                 "leave out " + ("--dp" if args.dp else "--plot"))
    if args.scaling and max(args.scaling) > MAX_SCALING_DP:
        sys.exit(f"error: --scaling: {max(args.scaling)} ranks is more than this report plans "
                 f"({MAX_SCALING_DP}); give smaller data-parallel sizes")
    with user_errors():  # a new PNG (or an earlier one of ours, with --overwrite), not over an input
        if args.plot:
            check_png("--plot", args.plot, [("--config", args.config), ("--docs", args.docs)], args.overwrite)
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
        from mot_parallel.corpus_building import register_demo_corpora
        from mot_parallel.data.datasets import open_datasets
        register_demo_corpora()
        with user_errors():
            table = open_datasets(cfg).train.table
        mods, source = cfg.model.modalities, table.prefix
    else:
        docs = MIXES[args.mix](args.documents, seed=args.seed)
        mods = ["text", "image", "speech"]
        table = SegmentTable.from_profiles(docs, mods, atomic=["image"])
        source = f"{args.mix} mix ({args.documents} documents, seed={args.seed})"
    if args.scaling:
        from mot_parallel.studies.benchmarks.packing_scale import scaling
        points = scaling(table, layout, args.scaling, args.steps, args.seed, weight)
        if args.json:
            print(json.dumps({"scaling": points, "source": source, "steps": args.steps}, indent=1))
        else:
            print_scaling(points, mods, source, args.steps)
        return
    result, extras = run(table, layout, args.steps, args.seed, weight)
    if args.plot:
        plot(extras, mods, args.plot)
    if args.json:
        print(json.dumps(dict(result, layout=layout, source=source, steps=args.steps), indent=1))
        return
    print_table(result, mods, layout, args.steps, source)
    if args.plot:
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
