"""Forward+backward time of one layer: dense vs MoT (grouped routing) vs a naive tutorial-style MoT.

    python tools/bench_layer.py                          # h 1024, 16 heads, ffn 2816, seq 2048, batch 1, fp32
    python tools/bench_layer.py --modalities 3 --split 0.6,0.3,0.1 --json
    python tools/bench_layer.py --hidden 256 --ffn 704 --seq 512 --rounds 3   # quick look
    python tools/bench_layer.py --device auto --dtype bf16 --hidden 4096 --heads 32 --ffn 11008 --seq 4096
                                                         # a 7B layer on the GPU (tools/gpu_check.py runs this)

All variants run in one process, interleaved round by round (median of --rounds), so the ratios to
dense are measured under the same machine state. Modalities are laid out as contiguous runs (documents,
image blocks) in shuffled order, each modality holding its --split share of the tokens (default even).
The routing plan is built once per step for all layers; its cost is reported apart (plan_ms).
TFLOP/s counts model FLOPs of the layer's training step (3 x forward, dense-equivalent: MoT does the
same FLOPs per token as dense) over the measured time; `of_peak` divides it by the device's dense bf16
peak (mot_parallel/flops.py table, or --peak-tflops), i.e. the layer's MFU.
On CPU, glibc is told to keep freed memory (PyTorch has no CPU caching allocator; otherwise every step
page-faults its activations back in and the ratios drift by +-5% with allocation history).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from mot_parallel.studies.benchmarks.naive_mot import NaiveMoTLayer  # noqa: E402
from mot_parallel.cli import int_in, positive_float  # noqa: E402
from mot_parallel.studies.benchmarks.timing import time_interleaved  # noqa: E402
from mot_parallel.distributed import device as dev  # noqa: E402
from mot_parallel.flops import forward_flops_per_token, param_counts  # noqa: E402
from mot_parallel.model import ModelSettings, MoTLayer, build_routing_plan, plan_for  # noqa: E402
from mot_parallel.model.rope import rope_cos_sin  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def modality_layout(seq: int, batch: int, fractions, seed: int = 0) -> torch.Tensor:
    """[seq, batch] modality ids: each modality's share cut into runs of 64-512 tokens, runs shuffled."""
    g = torch.Generator().manual_seed(seed)
    cols = []
    for _ in range(batch):
        counts = [int(round(f * seq)) for f in fractions]
        counts[0] += seq - sum(counts)
        runs = []
        for m, c in enumerate(counts):
            while c > 0:
                n = min(c, int(torch.randint(64, 513, (1,), generator=g)))
                runs.append(torch.full((n,), m, dtype=torch.long))
                c -= n
        order = torch.randperm(len(runs), generator=g).tolist()
        cols.append(torch.cat([runs[i] for i in order]))
    return torch.stack(cols, dim=1)


def make_step(kind, layer, x, mods, s, device):
    seq, batch = mods.shape
    grad = torch.randn_like(x)
    if kind == "naive":
        def step():
            layer.zero_grad(set_to_none=True)
            layer(x, mods).backward(grad)
        return step
    plan = plan_for(s, mods, device=device)
    rope = rope_cos_sin(None, seq, batch, s.head_dim, s.rope_theta, device)
    xg = plan.to_grouped(x.view(seq * batch, -1)).view_as(x).detach().requires_grad_()

    def step():
        layer.zero_grad(set_to_none=True)
        layer(xg, plan, rope).backward(grad)
    return step


def _check_args(args):
    """Exit with one `error:` line for shapes the layer cannot take; return the --split fractions (or None)."""
    kv = args.kv_heads or args.heads
    if args.hidden % args.heads or (args.hidden // args.heads) % 2:
        sys.exit(f"error: --hidden {args.hidden} / --heads {args.heads} must give an even integer head dim (RoPE)")
    if args.heads % kv:
        sys.exit(f"error: --kv-heads {kv} must divide --heads {args.heads}")
    if not args.split:
        return None
    try:
        split = [float(f) for f in args.split.split(",")]
    except ValueError:
        split = None
    if not split or abs(sum(split) - 1) > 1e-6 or any(not f >= 0 for f in split):
        sys.exit(f"error: --split {args.split} must be non-negative fractions summing to 1")
    return split


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int_in(1, 1 << 16), default=1024)
    ap.add_argument("--heads", type=int_in(1, 1024), default=16)
    ap.add_argument("--kv-heads", type=int_in(1, 1024), default=None)
    ap.add_argument("--ffn", type=int_in(1, 1 << 18), default=2816)
    ap.add_argument("--seq", type=int_in(1, 1 << 20), default=2048)
    ap.add_argument("--batch", type=int_in(1, 1 << 12), default=1)
    ap.add_argument("--modalities", type=int_in(1, 128), nargs="+", default=[2, 3], help="MoT variants to time")
    ap.add_argument("--split", default=None, help="token fractions per modality, e.g. 0.7,0.3 (default even)")
    ap.add_argument("--rounds", type=int_in(1, 10000), default=7)
    ap.add_argument("--warmup", type=int_in(0, 10000), default=1)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", choices=["auto", "cpu"], default="cpu")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    ap.add_argument("--peak-tflops", type=positive_float, default=None, help="device peak for of_peak (default: table)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    split = _check_args(args)
    device = dev.pick_device(0, force_cpu=args.device == "cpu")
    host_alloc = dev.set_host_allocator("keep") if device.type == "cpu" else None
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)

    def settings(m, untie):
        return ModelSettings(hidden_size=args.hidden, num_layers=1, num_heads=args.heads,
                             num_kv_heads=args.kv_heads or args.heads, ffn_hidden_size=args.ffn, vocab_size=1,
                             vocab_multiple=1, modalities=tuple(f"m{i}" for i in range(m)),
                             untie=frozenset(untie), params_dtype=dtype, document_masking=False)

    variants = {("dense", 1): settings(1, ())}
    for m in args.modalities:
        variants[("mot", m)] = settings(m, ("attention", "ffn", "norms"))
        if not args.no_naive:
            variants[("naive", m)] = variants[("mot", m)]
    x = torch.randn(args.seq, args.batch, args.hidden, device=device, dtype=dtype)
    steps, info, plan_ms = {}, {}, {}
    for (kind, m), s in variants.items():
        fractions = split if split and len(split) == m else [1.0 / m] * m
        mods = modality_layout(args.seq, args.batch, fractions)
        layer = MoTLayer(s, 0, device=device)
        if kind == "naive":
            layer = NaiveMoTLayer(s).to(device=device, dtype=dtype).load_from(layer)
        steps[(kind, m)] = make_step(kind, layer, x, mods.to(device) if kind == "naive" else mods, s, device)
        if kind == "mot":
            t = time.perf_counter()
            build_routing_plan(mods, m, device=device)
            plan_ms[m] = (time.perf_counter() - t) * 1e3
        counts = param_counts(s)
        info[(kind, m)] = dict(params=counts["layer_total"],
                               flops_per_token=forward_flops_per_token(s, args.seq)["layer"],
                               split=[round(f, 4) for f in fractions])
    ms = time_interleaved(steps, rounds=args.rounds, warmup=args.warmup, device=device)
    dense = ms[("dense", 1)]
    peak = args.peak_tflops or dev.peak_bf16_tflops(device)
    results = []
    for (k, m), t in ms.items():
        tflops = 3 * info[(k, m)]["flops_per_token"] * args.seq * args.batch / (t / 1e3) / 1e12
        results.append(dict(variant=k, modalities=m, ms=round(t, 3), ratio_to_dense=round(t / dense, 3),
                            tflops=round(tflops, 2), of_peak=round(tflops / peak, 4) if peak else None,
                            **info[(k, m)]))
    shape = dict(hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads or args.heads, ffn=args.ffn,
                 seq=args.seq, batch=args.batch, dtype=args.dtype, device=str(device), rounds=args.rounds,
                 threads=torch.get_num_threads(), keep_freed_host_memory=host_alloc,
                 device_name=dev.device_name(device), peak_tflops=peak)
    if args.json:
        print(json.dumps({"results": results, "shape": shape, "plan_ms": plan_ms}, indent=1))
        return
    print(f"one layer fwd+bwd, {shape}")
    print(f"{'variant':8} {'M':>2} {'ms':>10} {'x dense':>8} {'TFLOP/s':>8} {'of peak':>8} {'params':>12} "
          f"{'fwd FLOP/token':>15}  split")
    for r in results:
        of_peak = f"{r['of_peak']:.1%}" if r["of_peak"] is not None else "-"
        print(f"{r['variant']:8} {r['modalities']:>2} {r['ms']:>10.2f} {r['ratio_to_dense']:>8.3f} "
              f"{r['tflops']:>8.2f} {of_peak:>8} {r['params']:>12,} {r['flops_per_token']:>15,.0f}  {r['split']}")
    print("routing plan build (once per step, all layers): " +
          ", ".join(f"M={m}: {t:.2f} ms" for m, t in plan_ms.items()))


if __name__ == "__main__":
    main()
