"""Plan a run before spending GPU hours: memory per GPU, FLOPs, communication, step time, MFU, and a
ranked search over layouts that fit.

    python tools/plan.py --config configs/mot_7b_chameleon.yaml --gpus 256 [--gpu a100-80gb|h100-80gb]
    python tools/plan.py --config ... --gpus 64 --json --top 20
    python tools/plan.py --config ... --gpus 256 --nvlink-gbps 200 --gemm-efficiency 0.5   # change assumptions

The config's own layout (its parallel.* and train.* keys, DP = gpus / (TP x PP)) is evaluated first,
then every TP x PP x ZeRO x micro-batch x recompute layout of --gpus GPUs with the config's global batch.
Every assumption is printed; the model is documented in mot_parallel/planner/{memory,estimate}.py.
"""
import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import efficiency, fraction, int_in, non_negative_float, positive_float  # noqa: E402
from mot_parallel.config import ConfigError, load_config, validate  # noqa: E402
from mot_parallel.planner.hardware import GPUS  # noqa: E402


# the hardware assumptions a flag may override, and the values each takes (a rate of 0 divides by zero; an
# efficiency or overlap above 1 prints an MFU above 100%)
ASSUMPTIONS = {"memory_gb": positive_float, "peak_tflops": positive_float, "hbm_gbps": positive_float,
               "nvlink_gbps": positive_float, "inter_gbps": positive_float, "gemm_efficiency": efficiency,
               "attention_efficiency": efficiency, "dp_overlap": fraction, "reserve_gb": non_negative_float,
               "storage_gbps": positive_float}


def plan_dict(p):
    L = p.layout
    return {"layout": dataclasses.asdict(L), "fits": p.fits, "memory_gb": p.memory.as_gb(),
            "step_s": p.estimate.step_s, "tokens_per_s_per_gpu": p.estimate.tokens_per_s_per_gpu,
            "model_tflops_per_gpu": p.estimate.model_tflops_per_gpu, "mfu": p.estimate.mfu,
            "time_s": {"compute": p.estimate.compute_s, "tp_and_pp_comm": p.estimate.tp_comm_s,
                       "pipeline_bubble_fraction": p.estimate.bubble, "dp_comm_exposed": p.estimate.dp_exposed_s,
                       "optimizer": p.estimate.optimizer_s},
            "comm_bytes_per_gpu_per_step": p.estimate.comm_bytes}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--gpus", type=int_in(1, 1 << 20), default=None, help="GPUs (default: TP x PP, i.e. DP = 1)")
    ap.add_argument("--gpu", choices=sorted(GPUS), default="a100-80gb")
    ap.add_argument("--top", type=int_in(1, 10000), default=10)
    ap.add_argument("--json", action="store_true")
    for field, kind in ASSUMPTIONS.items():
        ap.add_argument("--" + field.replace("_", "-"), type=kind, default=None, help="override the assumption")
    ap.add_argument("--gpus-per-node", type=int_in(1, 1024), default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    hw = GPUS[args.gpu].with_(**{k: getattr(args, k) for k in list(ASSUMPTIONS) + ["gpus_per_node"]})
    if hw.reserve_gb >= hw.memory_gb:
        sys.exit(f"error: --reserve-gb {hw.reserve_gb:g} leaves nothing of --memory-gb {hw.memory_gb:g}")
    try:
        cfg = load_config(args.config, args.overrides)
        mp = cfg.parallel.tensor_parallel * cfg.parallel.pipeline_parallel
        gpus = args.gpus or mp
        lay = validate(cfg, gpus)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    from mot_parallel.flops import forward_flops_per_token, param_counts  # torch: only once the input is good
    from mot_parallel.model import ModelSettings
    from mot_parallel.planner import GB, evaluate, rank_params, search
    from mot_parallel.planner.reshard import reshard_cost
    s = ModelSettings.from_config(cfg)
    seq = cfg.model.max_seq_len
    own = evaluate(s, lay, seq, hw)
    ranked = search(s, gpus, lay.global_batch_size, seq, hw, top=args.top)
    counts = param_counts(s)
    flops = forward_flops_per_token(s, seq)
    step_tokens = lay.global_batch_size * seq
    report = {
        "config": args.config, "gpus": gpus, "hardware": dataclasses.asdict(hw),
        "model": {"total_params": counts["total"], "active_params_per_token": counts["active"],
                  "forward_flops_per_token": flops["total"], "train_flops_per_step": 3 * flops["total"] * step_tokens,
                  "tokens_per_step": step_tokens},
        "assumptions": ["bf16 weights/gradients, fp32 master + Adam states (DeepSpeed ZeRO 0.19 buffers)",
                        "flash / memory-efficient attention (no [s, s] scores kept), one document mask per micro-batch",
                        "ring collectives; a group spanning nodes runs at the inter-node per-GPU bandwidth",
                        "1F1B pipeline bubble (PP-1)/micro-batches; (1 - dp_overlap) of DP traffic exposed",
                        "GEMM and attention efficiencies as given; optimizer streams ~36 B/param through HBM"],
        "config_layout": dict(plan_dict(own), params_per_stage_rank=[
            rank_params(s, lay.tp, lay.pp, st).total for st in range(lay.pp)]),
        "ranked": [plan_dict(p) for p in ranked],
        "reshard_on_resume": dataclasses.asdict(reshard_cost(s, lay, hw)),
    }
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return
    print(f"{args.config} on {gpus} x {args.gpu}: {counts['total'] / 1e9:.2f}B parameters "
          f"({counts['active'] / 1e9:.2f}B active per token), {flops['total'] / 1e9:.1f} GFLOP/token forward, "
          f"{step_tokens / 1e6:.2f}M tokens/step")
    print("assumptions: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(hw).items()))
    for a in report["assumptions"]:
        print(f"  - {a}")
    m = own.memory.as_gb()
    print(f"\nconfig layout {own.layout.describe()}: {'FITS' if own.fits else 'DOES NOT FIT'} "
          f"({m['total']:.1f} of {hw.memory_gb:.0f} GB, worst stage {m['stage']})")
    print("  memory GB: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if k not in ("total", "stage")))
    e = own.estimate
    print(f"  step {e.step_s:.2f} s = (compute {e.compute_s:.2f} + TP/PP comm {e.tp_comm_s:.2f}) x (1 + bubble "
          f"{e.bubble:.2f}) + DP exposed {e.dp_exposed_s:.2f} + optimizer {e.optimizer_s:.3f}")
    print(f"  {e.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, {e.model_tflops_per_gpu:.0f} TFLOP/s/GPU, MFU {e.mfu:.1%}")
    for name, c in e.comm_bytes.items():
        print(f"  comm {name}: {c['bytes'] / GB:.2f} GB per GPU per step over {c['link']}")
    r = reshard_cost(s, lay, hw)
    print(f"  resuming a checkpoint of another layout into this one (checkpoint.reshard_on_resume=auto): "
          f"{r.universal_bytes / GB:.3g} GB universal copy on disk, +{r.peak_bytes_per_rank / GB:.3g} GB host "
          f"memory per rank, ~{r.convert_s:.2g} s to convert + ~{r.load_s:.2g} s to load at "
          f"{hw.storage_gbps:g} GB/s per node")
    print(f"\ntop {len(ranked)} layouts that fit, by estimated tokens/s/GPU:")
    print(f"  {'layout':44} {'mem GB':>7} {'step s':>7} {'tok/s/GPU':>10} {'MFU':>6}")
    for p in ranked:
        print(f"  {p.layout.describe():44} {p.memory.total / GB:>7.1f} {p.estimate.step_s:>7.2f} "
              f"{p.estimate.tokens_per_s_per_gpu:>10,.0f} {p.estimate.mfu:>6.1%}")


if __name__ == "__main__":
    main()
