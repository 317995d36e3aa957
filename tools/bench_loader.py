"""Throughput of the data loader alone for a config: packing (all ranks' cells), reading this rank's
micro-batches and building their routing plans on the host, as training would.

    python tools/bench_loader.py --config configs/demo_cpu.yaml [--steps 50] [--dp 1] [--json]

Compare tokens/s here with the training's tokens/s (metrics.jsonl): the loader must be >= 10x faster so
the background prefetch always hides it.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import positive_int, user_errors  # noqa: E402
from mot_parallel.config import ConfigError, load_config, validate  # noqa: E402
from mot_parallel.data import LoaderSettings, MoTDataLoader  # noqa: E402
from mot_parallel.data.datasets import open_datasets  # noqa: E402
from mot_parallel.model import ModelSettings, plan_for  # noqa: E402
from mot_parallel.model.diffusion import noiser_for  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=positive_int, default=50)
    ap.add_argument("--dp", type=positive_int, default=None, help="data-parallel size (default: 1)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        tp, pp = cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel
        layout = validate(cfg, (args.dp or 1) * tp * pp)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    s = ModelSettings.from_config(cfg)
    with user_errors():
        data = open_datasets(cfg).train

    def plan(mb):
        return plan_for(s, mb.modality_ids, mb.segment_ids, tp_size=tp, span_ids=mb.span_ids,  # as the trainer plans
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
