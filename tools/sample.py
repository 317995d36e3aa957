"""Sample from a trained model: text for a prompt, pictures for captions (DDIM with classifier-free guidance).

    python tools/sample.py --checkpoint runs/demo_transfusion --caption "the picture shows two large red star at the top ." --out red.png
    python tools/sample.py --checkpoint runs/demo_transfusion --prompt "the picture shows" --tokens 12
    python tools/sample.py --checkpoint runs/demo_transfusion --score 64 [--out grid.png] [--json]

--checkpoint: a run directory (its newest checkpoint is exported to a universal checkpoint next to it first),
a universal checkpoint, or a single-file export. Captions and prompts are text for the tokenizer the training
corpus was built with (tools/preprocess_data.py --tokenizer records it in the corpus sidecar: found through the
checkpoint's data.path, or --corpus PREFIX, or given as --tokenizer PATH; generation stops at its EOD), else
demo-world words (mot_parallel/corpus_building/demo_corpus.py); any vocabulary takes token ids (--caption-ids 3,17,5).
--score N draws N random demo captions, samples a picture for each, and checks the colour of the drawn
pixels and the half of the picture they occupy against the caption (data/demo_pictures.py score_picture):
it prints the accuracy of each next to chance (1/8 for the colour, 1/2 for the half).
Pictures are decoded from their patches: pixels directly, latents with --vae DIR (a local diffusers VAE).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import positive_int, user_errors  # noqa: E402


def _model(path):
    import mot_parallel
    from mot_parallel.convert.universal import is_universal
    if not os.path.isfile(os.path.join(path, "config.yaml")):
        sys.exit(f"error: {path}: no config.yaml; give a run directory, a universal checkpoint or an export")
    if not is_universal(path) and not os.path.isfile(os.path.join(path, "model.safetensors")):
        path = _export_run(path)
    return mot_parallel.load_pretrained(path).model


def _export_run(run_dir):
    """A run directory: export its newest checkpoint once to <run_dir>/universal_for_sampling."""
    from mot_parallel.training.checkpoint_files import step_dirs
    steps = step_dirs(os.path.join(run_dir, "checkpoints"))
    if not steps:
        sys.exit(f"error: {run_dir}: no checkpoints to sample from")
    out = os.path.join(run_dir, f"universal_{steps[-1][1]}")
    if not os.path.isdir(out):
        import subprocess
        tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_checkpoint.py")
        subprocess.run([sys.executable, tool, "to-universal", "--config", os.path.join(run_dir, "config.yaml"),
                        "--checkpoint", os.path.join(run_dir, "checkpoints"), "--out", out], check=True)
    return out


def _picture(model, caption_ids, args, seed):
    from mot_parallel.generation import generate_image
    patches = generate_image(model, caption_ids, steps=args.steps, cfg_scale=args.cfg, seed=seed)
    spec = model.settings.continuous[0]
    if spec.source == "pixels" and spec.channels == 3:
        from mot_parallel.corpus_building.demo_pictures import from_patches
        return from_patches(patches.numpy())
    from mot_parallel.data.images import decode_patches  # latents: a VAE decodes them
    return decode_patches(patches.numpy(), spec, args.vae) / 255.0


def _score(model, args):
    from mot_parallel.corpus_building.demo_corpus import _caption
    from mot_parallel.corpus_building.demo_pictures import score_picture
    rng = np.random.default_rng([args.seed, 7])
    colour = half = 0
    pictures = []
    for k in range(args.score):
        ids, attrs = _caption(rng)
        rgb = _picture(model, ids, args, args.seed + k)
        c, h = score_picture(rgb, attrs)
        colour, half = colour + c, half + h
        pictures.append(rgb)
    res = {"samples": args.score, "colour_accuracy": colour / args.score, "colour_chance": 1 / 8,
           "half_accuracy": half / args.score, "half_chance": 1 / 2, "steps": args.steps, "cfg_scale": args.cfg}
    return res, pictures


def _save(pictures, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(8, len(pictures))
    rows = -(-len(pictures) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, rgb in zip(axes.flat, pictures):
        ax.imshow(rgb)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def text_tokenizer(args):
    """The TextTokenizer of --tokenizer, of --corpus's sidecar, or of the checkpoint's data.path sidecar; or None."""
    from mot_parallel.data.indexed import SIDECAR, read_sidecar
    from mot_parallel.data.text_tokenizer import load_tokenizer, tokenizer_from_record
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    prefix = args.corpus
    if prefix is None and os.path.isfile(os.path.join(args.checkpoint, "config.yaml")):
        import yaml
        with open(os.path.join(args.checkpoint, "config.yaml"), encoding="utf-8") as f:
            data = (yaml.safe_load(f) or {}).get("data") or {}
        prefix = data.get("path") if isinstance(data.get("path"), str) and " " not in data["path"] else None
    record = read_sidecar(prefix + SIDECAR).get("tokenizer") if prefix else None
    return tokenizer_from_record(record, prefix + SIDECAR) if record else None


def _ids(text, ids, tok=None):
    if ids:
        return [int(x) for x in ids.split(",")]
    if tok is not None:
        return list(tok.prefix) + tok.encode(text)
    from mot_parallel.corpus_building.demo_corpus import W
    words = text.replace(".", " .").split()
    unknown = [w for w in words if w not in W]
    if unknown:
        sys.exit(f"error: {unknown} are not demo-world words; pass token ids with --caption-ids / --prompt-ids")
    return [W[w] for w in words]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--caption")
    ap.add_argument("--caption-ids")
    ap.add_argument("--prompt")
    ap.add_argument("--prompt-ids")
    ap.add_argument("--tokens", type=positive_int, default=16, help="text tokens to generate")
    ap.add_argument("--score", type=positive_int, help="sample and score N random demo captions")
    ap.add_argument("--steps", type=positive_int, default=50, help="DDIM steps")
    ap.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae", help="a local diffusers VAE directory (latent models)")
    ap.add_argument("--corpus", help="a corpus prefix whose sidecar names the text tokenizer")
    ap.add_argument("--tokenizer", help="a local text tokenizer (tokenizer.json or a tokenizer directory)")
    ap.add_argument("--out", help="PNG to write")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (args.caption or args.caption_ids or args.prompt or args.prompt_ids or args.score):
        sys.exit("error: give --caption, --prompt or --score")
    with user_errors():
        tok = text_tokenizer(args)
        model = _model(args.checkpoint)
        if args.prompt or args.prompt_ids:
            from mot_parallel.generation import generate_text
            from mot_parallel.corpus_building.demo_corpus import WORDS
            out = generate_text(model, _ids(args.prompt, args.prompt_ids, tok), args.tokens,
                                stop_token=tok.eod if tok is not None else None)
            if tok is not None and args.prompt:
                print(tok.decode([i for i in out if i < tok.vocab_size]))
            else:
                print(" ".join(WORDS[i] if i < len(WORDS) else str(i) for i in out) if args.prompt else out)
        if args.caption or args.caption_ids:
            rgb = _picture(model, _ids(args.caption, args.caption_ids, tok), args, args.seed)
            _save([rgb], args.out or "sample.png")
            print(f"wrote {args.out or 'sample.png'}")
        if args.score:
            res, pictures = _score(model, args)
            if args.out:
                _save(pictures, args.out)
            print(json.dumps(res, indent=1) if args.json else
                  f"{res['samples']} samples: colour right {res['colour_accuracy']:.0%} (chance 12.5%), "
                  f"picture in the named half {res['half_accuracy']:.0%} (chance 50%)")


if __name__ == "__main__":
    main()
