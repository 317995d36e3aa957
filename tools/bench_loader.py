"""Throughput of the data loader alone for a config: packing (all ranks' cells), reading this rank's
micro-batches and building their routing plans on the host, as training would.

    python tools/bench_loader.py --config configs/demo_cpu.yaml [--steps 50] [--dp 1] [--json]

Compare tokens/s here with the training's tokens/s (metrics.jsonl): the loader must be >= 10x faster so
the background prefetch always hides it.

    python tools/bench_loader.py --simulate [--dp 512] [--micro-batches 8] [--seq-len 4096] [--mix heavy]
                                 [--host-ms 200] [--device-ms 200] [--steps 8] [--json]

--simulate: the loader thread's effect on a training loop's step time at a large data-parallel size, without
GPUs or a corpus (mot_parallel/studies/benchmarks/loader_gil.py): a loop whose step holds the GIL for --host-ms of
Python (module code, kernel launches) and then waits --device-ms for the device, fed by a real loader over a
synthetic length-profile mix (tools/balance_report.py --mix) at DP x micro-batches x seq-len; its host time
and whole step time with the loader thread running, against the same loop with no thread.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import int_in, positive_int, user_errors  # noqa: E402
from mot_parallel.corpus_building.profiles import MIXES  # noqa: E402
from mot_parallel.config import ConfigError, load_config, validate  # noqa: E402


def non_negative_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 60000 ms")
    return value


def simulate(args):
    from mot_parallel.studies.benchmarks.loader_gil import simulate as run
    from mot_parallel.data.corpus import SegmentTable
    table = SegmentTable.from_profiles(MIXES[args.mix](args.documents, seed=0), ["text", "image", "speech"],
                                       atomic=["image"])
    layout = {"dp": args.dp or 512, "micro_batches": args.micro_batches, "micro_batch_size": args.micro_batch_size,
              "seq_len": args.seq_len}
    res = run(table, layout, args.steps, args.host_ms, args.device_ms)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{args.mix} mix, DP {layout['dp']} x {layout['micro_batches']} x {layout['micro_batch_size']} x "
          f"{layout['seq_len']}; a step: {args.host_ms:g} ms of Python holding the GIL, then {args.device_ms:g} ms "
          f"waiting for the device; medians of {args.steps} steps")
    print(f"{'':28} {'no loader':>10} {'loader':>10} {'ratio':>7}")
    print(f"{'host ms per step':28} {res['host_ms_alone']:>10.1f} {res['host_ms_with_loader']:>10.1f} "
          f"{res['host_slowdown']:>7.3f}")
    print(f"{'step ms (+ waiting for data)':28} {res['step_ms_alone']:>10.1f} {res['step_ms_with_loader']:>10.1f} "
          f"{res['step_slowdown']:>7.3f}")
    print(f"loader: {res['loader_ms_per_step']:.1f} ms per step in its thread (plan + read; CPU "
          f"{res['loader_cpu_ms_per_step']:.1f} ms); the loop waited {res['data_wait_ms']:.1f} ms per step for data")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--steps", type=int_in(1, 10 ** 6), default=None, help="steps to time (default 50; --simulate: 8)")
    ap.add_argument("--dp", type=int_in(1, 1 << 16), default=None,
                    help="data-parallel size (default: 1; --simulate: 512)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--simulate", action="store_true", help="the loader thread against a simulated training loop")
    ap.add_argument("--mix", choices=sorted(MIXES), default="heavy", help="--simulate: the synthetic mix")
    ap.add_argument("--documents", type=positive_int, default=40000, help="--simulate: size of the mix")
    ap.add_argument("--micro-batches", type=positive_int, default=8, help="--simulate: per step per rank")
    ap.add_argument("--micro-batch-size", type=positive_int, default=1, help="--simulate: sequences each")
    ap.add_argument("--seq-len", type=positive_int, default=4096, help="--simulate")
    ap.add_argument("--host-ms", type=non_negative_ms, default=200.0, help="--simulate: Python per step")
    ap.add_argument("--device-ms", type=non_negative_ms, default=200.0, help="--simulate: device wait per step")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.simulate:
        if args.config or args.overrides:
            sys.exit("error: --simulate runs on a synthetic mix (--mix); leave out --config and overrides")
        if args.dp and args.dp * args.micro_batches * args.micro_batch_size * args.seq_len > 2 ** 34:
            sys.exit(f"error: --dp {args.dp}: a global batch of more than 2**34 tokens; give a smaller layout")
        args.steps = args.steps or 8
        return simulate(args)
    if not args.config:
        sys.exit("error: --config is required (or --simulate)")
    args.steps = args.steps or 50
    try:
        cfg = load_config(args.config, args.overrides)
        tp, pp = cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel
        layout = validate(cfg, (args.dp or 1) * tp * pp)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    from mot_parallel.corpus_building import register_demo_corpora
    from mot_parallel.data import LoaderSettings, MoTDataLoader  # torch: only once the input is good
    from mot_parallel.data.datasets import open_datasets
    from mot_parallel.distributed.collectives import VirtualGroup
    from mot_parallel.distributed.parallel_context import ParallelContext
    from mot_parallel.model import ModelSettings, plan_for
    from mot_parallel.model.diffusion import noiser_for
    s = ModelSettings.from_config(cfg)
    register_demo_corpora()  # data.path: demo: the demo corpus
    with user_errors():
        data = open_datasets(cfg).train

    parallel = ParallelContext.of(VirtualGroup(tp, 0), layout.sequence_parallel)  # rank 0's plan, no processes

    def plan(mb):
        return plan_for(s, mb.modality_ids, mb.segment_ids, parallel=parallel, span_ids=mb.span_ids,  # as the trainer
                        context_start=mb.context_start)

    settings = replace(LoaderSettings.from_config(cfg, layout, dp_rank=0), prefetch=1)
    loader = MoTDataLoader(data.table, settings, plan_builder=plan, order=data.order, noiser=noiser_for(cfg, s))
    next(loader)  # start-up (corpus metadata, thread)
    t = time.perf_counter()
    tokens = 0
    for _ in range(args.steps):
        step = next(loader)
        tokens += sum(mb.num_tokens for mb in step.micro_batches)
    dt = time.perf_counter() - t
    loader.close()
    res = {"tokens_per_s_per_rank": tokens / dt, "ms_per_step": 1e3 * dt / args.steps, "steps": args.steps,
           "layout": {"dp": layout.dp, "grad_accum": layout.grad_accum, "micro_batch_size": layout.micro_batch_size,
                      "seq_len": cfg.model.max_seq_len}, "balance": cfg.data.balance}
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"loader: {res['tokens_per_s_per_rank']:,.0f} tokens/s per rank, {res['ms_per_step']:.1f} ms per step "
              f"(pack + read + plans; layout {res['layout']})")


if __name__ == "__main__":
    main()
