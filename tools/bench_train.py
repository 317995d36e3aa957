"""Training throughput of MoT vs its dense baseline (model.untie=[]) on the same config, in one run.

    python tools/bench_train.py --config configs/demo_cpu.yaml [--nproc 2] [--steps 40] [--json] [key=value ...]
    python tools/bench_train.py --config configs/real_cpu.yaml --eval-iters 4     # + evaluation overhead

Each variant trains --steps steps on --nproc local gloo processes (or GPUs when present) from scratch
into a temporary run directory; the first --skip steps (start-up, warm caches) are excluded. Reports
tokens/s, step time and its split (data wait, forward, backward, optimizer), and MoT / dense ratios.
With --eval-iters K each variant also evaluates K global batches 4 times (every --steps/4 steps, the last at
the end; held-out data from the config, else data.valid_fraction=0.05): seconds per evaluation, per
evaluated batch, and that batch as a fraction of a training step (forward only, no optimizer: about 1/3 is
expected); the overhead of evaluating K batches every N steps is K x that fraction / N.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import checked_config, int_in, user_errors  # noqa: E402
from mot_parallel.corpus_building import register_demo_corpora  # noqa: E402
from mot_parallel.preflight import preflight  # noqa: E402
from mot_parallel.testing import run_distributed  # noqa: E402

PARTS = ("data", "forward", "backward", "optimizer")


def _train(config, overrides):
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(config, overrides)
    Trainer(cfg).train()
    dist.barrier()
    if dist.get_rank() != 0:
        return None
    with open(os.path.join(cfg.run.output_dir, "metrics.jsonl")) as f:
        return list(map(json.loads, f))


def _valid_split(config, overrides):
    """Validation data for --eval-iters: the config's own, else hold out 5% of the documents."""
    from mot_parallel.config import load_config
    cfg = load_config(config, overrides)
    return [] if cfg.data.valid_path or cfg.data.valid_fraction > 0 else ["data.valid_fraction=0.05"]


def summarise(all_records, skip, eval_iters=0):
    records = [r for r in all_records if r.get("kind", "train") == "train"]
    rows = [r for r in records if r["step"] > skip]
    med = lambda k: statistics.median(r[k] for r in rows if r.get(k) is not None)  # noqa: E731
    out = {"tokens_per_s": med("tokens_per_s"), "step_time_s": med("step_time_s"),
           "final_loss": records[-1]["loss"]}
    for p in PARTS:
        key = f"time/{p}_s"
        out[f"{p}_s"] = med(key) if any(r.get(key) is not None for r in rows) else None
    evals = [r["eval_time_s"] for r in all_records if r.get("kind") == "valid"]
    if eval_iters and evals:
        out["eval_s"] = statistics.median(evals)
        out["eval_batch_s"] = out["eval_s"] / eval_iters
        out["eval_batch_over_step"] = out["eval_batch_s"] / out["step_time_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--nproc", type=int_in(1, 256), default=2)
    ap.add_argument("--steps", type=int_in(1, 10 ** 6), default=40)
    ap.add_argument("--skip", type=int_in(0, 10 ** 6), default=5, help="warm-up steps left out of the medians")
    ap.add_argument("--eval-iters", type=int_in(0, 10 ** 6), default=0,
                    help="also measure evaluation of K global batches")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.skip >= args.steps:
        sys.exit(f"error: --skip {args.skip} leaves no step of --steps {args.steps} to measure")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {}
        for name, extra in (("mot", []), ("dense", ["model.untie=[]", "model.untie_final_norm=false"])):
            ov = list(args.overrides) + extra + [f"train.steps={args.steps}", "logging.interval=1",
                                                  "logging.tensorboard=false", "checkpoint.interval=0",
                                                  f"run.output_dir={os.path.join(tmp, name)}",
                                                  f"data.demo_documents={4000}"]
            if args.eval_iters:
                ov += [f"train.eval_iters={args.eval_iters}", f"train.eval_interval={max(1, args.steps // 4)}"]
                ov += _valid_split(args.config, args.overrides)
            variants[name] = ov
            cfg, layout = checked_config(args.config, ov, world=args.nproc)  # before any process
            with user_errors():
                register_demo_corpora()  # data.path: demo
                preflight(cfg, layout)
        for name, ov in variants.items():
            records = run_distributed(_train, args.nproc, args=(args.config, ov), timeout=3600)[0]
            results[name] = summarise(records, args.skip, args.eval_iters)
    results["mot_over_dense"] = {"tokens_per_s": results["mot"]["tokens_per_s"] / results["dense"]["tokens_per_s"],
                                 "step_time_s": results["mot"]["step_time_s"] / results["dense"]["step_time_s"]}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{args.config}, {args.nproc} processes, median over steps {args.skip + 1}-{args.steps}")
    print(f"{'variant':8} {'tokens/s':>10} {'step s':>8} " + " ".join(f"{p + ' s':>11}" for p in PARTS)
          + f" {'final loss':>11}")
    for name in ("mot", "dense"):
        r = results[name]
        parts = " ".join(f"{r[p + '_s']:>11.4f}" if r[p + "_s"] is not None else f"{'-':>11}" for p in PARTS)
        print(f"{name:8} {r['tokens_per_s']:>10,.0f} {r['step_time_s']:>8.3f} {parts} {r['final_loss']:>11.4f}")
    print(f"MoT / dense: tokens/s x{results['mot_over_dense']['tokens_per_s']:.3f}, "
          f"step time x{results['mot_over_dense']['step_time_s']:.3f}")
    if args.eval_iters:
        for name in ("mot", "dense"):
            r = results[name]
            print(f"{name}: evaluation of {args.eval_iters} global batches {r['eval_s']:.3f} s = {r['eval_batch_s']:.3f} s "
                  f"per batch = {r['eval_batch_over_step']:.2f} of a training step; every N steps it adds "
                  f"{args.eval_iters * r['eval_batch_over_step']:.2f}/N of the training time")


if __name__ == "__main__":
    main()
