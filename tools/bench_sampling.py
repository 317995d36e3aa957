"""Where picture sampling spends its time: one DDIM step per picture, picture by picture vs batched.

    python tools/bench_sampling.py --config configs/demo_transfusion_cpu.yaml [--pictures 16] [--json] [key=value ...]

A model of the config (random weights: the time does not depend on them) runs a DDIM step for --pictures
pictures with 11-token captions (the demo's) and classifier-free guidance, two ways, side by side:
  per picture  every DDIM step runs the conditioned and the unconditioned pass as two forwards of one column,
               each building its routing plan first (how generation worked before batching);
  batched      every picture's two passes are columns of one forward, the plan built once per batch.
For each: milliseconds per picture and DDIM step, and the shares of that time spent building the plan,
recomputing the context (the caption's and BOI's tokens, what a KV cache would save: the conditioned pass
minus the unconditioned one, which holds only BOI), and in the patch encoder and decoder (U-Net or linear).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from mot_parallel.cli import checked_config, positive_int  # noqa: E402


def _ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _coders_ms(model, spec, n, repeat):
    """The patch encoder and decoder on n images (the two timestep MLPs included)."""
    from mot_parallel.model.continuous import _time_embedding
    from mot_parallel.model.unet import to_images
    emb, head = model.embedding.continuous, model.head.continuous
    x = torch.randn(n * spec.num_patches, spec.patch_dim)
    t = torch.full((n,), 500)
    h = torch.randn(n * spec.num_patches, model.settings.hidden_size)
    if not spec.unet:
        return _ms(lambda: (emb.proj[spec.name](x) + _time_embedding(emb, spec.name, t.repeat(spec.num_patches), x.dtype),
                            head.proj[spec.name](h)), repeat)

    def run():
        e = _time_embedding(emb, spec.name, t, x.dtype)
        emb.unet[spec.name](to_images(x, spec.channels, spec.patch, spec.grid), e)
        head.unet[spec.name](h.view(n, *spec.grid, -1).permute(0, 3, 1, 2), _time_embedding(head, spec.name, t, x.dtype),
                             to_images(x, spec.channels, spec.patch, spec.grid))
    return _ms(run, repeat)


def measure(model, captions, repeat):
    from mot_parallel.generation import _ImageBatch
    s = model.settings
    spec = s.continuous[0]
    m, boi = s.modalities.index(spec.name), [spec.boi_token]
    n = len(captions)
    out = {}
    with torch.no_grad():
        x1 = torch.randn(1, spec.num_patches, spec.patch_dim)
        plan = _ms(lambda: _ImageBatch(model, [captions[0] + boi], m, spec.num_patches), repeat)
        cond_b, uncond_b = _ImageBatch(model, [captions[0] + boi], m, spec.num_patches), \
            _ImageBatch(model, [boi], m, spec.num_patches)
        cond, uncond = _ms(lambda: cond_b.eps(model, x1, 500), repeat), _ms(lambda: uncond_b.eps(model, x1, 500), repeat)
        coders = _coders_ms(model, spec, 2, repeat)
        total = 2 * plan + cond + uncond
        out["per picture"] = {"ms_per_picture_step": total, "plan": 2 * plan / total, "context": (cond - uncond) / total,
                              "patch_coders": coders / total}
        contexts = [ctx for c in captions for ctx in (c + boi, boi)]
        xb = torch.randn(2 * n, spec.num_patches, spec.patch_dim)
        plan = _ms(lambda: _ImageBatch(model, contexts, m, spec.num_patches), repeat)
        full, only_boi = _ImageBatch(model, contexts, m, spec.num_patches), \
            _ImageBatch(model, [boi] * (2 * n), m, spec.num_patches)
        step = _ms(lambda: full.eps(model, xb, 500), repeat)
        bare = _ms(lambda: only_boi.eps(model, xb, 500), repeat)
        coders = _coders_ms(model, spec, 2 * n, repeat)
        out[f"batched ({n})"] = {"ms_per_picture_step": step / n, "plan": 0.0, "context": (step - bare) / step,
                                 "patch_coders": coders / step, "plan_once_ms": plan}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--pictures", type=positive_int, default=16)
    ap.add_argument("--repeat", type=positive_int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg, _ = checked_config(args.config, args.overrides)
    if not cfg.model.continuous:
        sys.exit(f"error: {args.config}: model.continuous is empty; sampling pictures needs a continuous modality")
    from mot_parallel.model import ModelSettings, MoTModel
    torch.manual_seed(0)
    model = MoTModel(ModelSettings.from_config(cfg)).eval()
    captions = [torch.randint(0, cfg.model.vocab_size, (11,)).tolist() for _ in range(args.pictures)]  # demo-long
    rows = measure(model, captions, args.repeat)
    result = {"config": args.config, "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{args.config}: one DDIM step (guided: conditioned + unconditioned pass), {torch.get_num_threads()} threads")
    print(f"{'path':16} {'ms/picture':>11} {'plan':>6} {'context':>8} {'encoder+decoder':>16}")
    for name, r in rows.items():
        print(f"{name:16} {r['ms_per_picture_step']:>11.2f} {r['plan']:>6.0%} {r['context']:>8.0%} "
              f"{r['patch_coders']:>16.0%}")


if __name__ == "__main__":
    main()
