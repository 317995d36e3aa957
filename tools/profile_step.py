"""Profile training steps: a torch.profiler trace (TensorBoard / Perfetto) and the step time split by category.

    python tools/profile_step.py --config configs/demo_cpu.yaml [--nproc 2] [--steps 3] [--warmup 2] [--json]

Runs the trainer on --nproc local processes and profiles --steps steps after --warmup on rank 0; traces
go to <out>/trace_rank*.json (open in https://ui.perfetto.dev or chrome://tracing, or
`tensorboard --logdir <out>` with the torch-tb-profiler plugin). Categories, from the profiler's event
tree on the training thread (each event's self time goes to the nearest classified event, itself
or an ancestor):
  data          waiting for the loader (scope mot/data)
  routing       token permutations to/from grouped order (scope mot/routing)
  gemm          matrix multiplies (per-modality grouped GEMMs, vocab head)
  attention     scaled-dot-product attention, forward and backward
  norms         RMSNorm forward and backward
  tp_comm       tensor/sequence-parallel collectives (scope mot/tp_comm)
  dp_comm       data-parallel / ZeRO collectives (DeepSpeed's, outside mot/tp_comm)
  optimizer     the optimizer step outside its collectives (scope mot/optimizer)
  other         everything else in the step: elementwise ops, loss, framework overhead
Their sum is compared with the measured step time (the profiled steps' wall clock).
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import add_overwrite, checked_config, int_in, user_errors  # noqa: E402
from mot_parallel.outputs import check_dir, fresh_dir  # noqa: E402
from mot_parallel.testing import run_distributed  # noqa: E402

TRACES = "profile_step traces"  # the output mark of a trace directory
CATEGORIES = ("data", "routing", "gemm", "attention", "norms", "tp_comm", "dp_comm", "optimizer", "other")
_COMM = ("allreduce", "all_reduce", "allgather", "all_gather", "reduce_scatter", "reducescatter", "broadcast",
         "gloo:", "nccl:", "c10d::", "barrier")


def classify(name: str, inherited: str):
    n = name.lower()
    if n == "mot/data":
        return "data"
    if n == "mot/tp_comm":
        return "tp_comm"
    if n == "mot/routing":
        return "routing"
    if inherited == "tp_comm":
        return "tp_comm"
    if any(c in n for c in _COMM):
        return "dp_comm"
    if n == "mot/optimizer":
        return "optimizer"
    if "scaled_dot_product" in n or "flash_attention" in n or "efficient_attention" in n:
        return "attention"
    if "rmsnorm" in n or "rms_norm" in n:
        return "norms"
    if n in ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul", "aten::linear") or \
            "groupedmm" in n:
        return "gemm"
    return inherited


def attribute(events, step_scope="mot/step", data_scope="mot/data"):
    """Self time (us) per category over the trees rooted at the step and data scopes."""
    totals = {c: 0.0 for c in CATEGORIES}

    def walk(evt, inherited):
        cat = classify(evt.name, inherited)
        totals[cat] += evt.self_cpu_time_total
        for child in evt.cpu_children:
            walk(child, cat)
    for evt in events:
        if evt.cpu_parent is None and evt.name in (step_scope, data_scope):
            walk(evt, "other")
    return totals


def _profiled_train(config, overrides, out_dir, warmup, steps):
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from mot_parallel.config import load_config
    from mot_parallel.distributed import device as dev
    from mot_parallel.training import Trainer
    cfg = load_config(config, list(overrides) + [f"train.steps={warmup + steps}", "logging.interval=1",
                                                 "logging.tensorboard=false", "checkpoint.interval=0",
                                                 f"run.output_dir={out_dir}/run", "checkpoint.resume=none"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.accelerator_available() else [])
    prof = profile(activities=activities)
    wall = []

    def begin(step):  # the window starts at the data fetch of the first profiled step
        if step == warmup + 1:
            prof.start()
            wall.append(time.perf_counter())

    def end(step):
        if step == warmup + steps:
            dev.synchronize(trainer.device)
            wall.append(time.perf_counter())
            prof.stop()
    trainer = Trainer(cfg, on_step_begin=begin, on_step_end=end)
    trainer.train()
    rank = dist.get_rank()
    prof.export_chrome_trace(os.path.join(out_dir, f"trace_rank{rank}.json"))
    totals = attribute(prof.events())
    return {"rank": rank, "categories_s": {k: v / 1e6 / steps for k, v in totals.items()},
            "measured_step_s": (wall[1] - wall[0]) / steps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--nproc", type=int_in(1, 256), default=1)
    ap.add_argument("--steps", type=int_in(1, 10000), default=3)
    ap.add_argument("--warmup", type=int_in(0, 10000), default=2)
    ap.add_argument("--out", default=None, help="trace directory (default: a temporary one, printed)")
    add_overwrite(ap)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg, _ = checked_config(args.config, args.overrides, world=args.nproc)  # bad input: one error line, first
    with user_errors():
        if args.out:
            check_dir("--out", args.out, TRACES, [("--config", args.config), ("run.output_dir", cfg.run.output_dir)],
                      args.overwrite)
    out = fresh_dir(args.out or tempfile.mkdtemp(prefix="mot_profile_"), TRACES)  # an earlier one of ours: replaced
    res = run_distributed(_profiled_train, args.nproc, args=(args.config, args.overrides, out, args.warmup,
                                                             args.steps), timeout=3600)[0]
    cats, step = res["categories_s"], res["measured_step_s"]
    total = sum(cats.values())
    report = {"trace_dir": out, "measured_step_s": step, "categories_s": cats,
              "shares": {k: v / step for k, v in cats.items()}, "sum_over_measured": total / step}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{args.config}: {args.nproc} process(es), {args.steps} profiled steps, measured {step * 1e3:.1f} ms/step")
    print(f"{'category':12} {'ms/step':>10} {'share':>8}")
    for k in CATEGORIES:
        print(f"{k:12} {cats[k] * 1e3:>10.2f} {cats[k] / step:>8.1%}")
    print(f"{'sum':12} {total * 1e3:>10.2f} {total / step:>8.1%}  (of the measured step time)")
    print(f"trace: {out}/trace_rank0.json")


if __name__ == "__main__":
    main()
