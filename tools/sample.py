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

from mot_parallel.cli import (add_overwrite, existing_dir, existing_path, float_in, input_errors,  # noqa: E402
                               int_in, int_list, seed, user_errors)
from mot_parallel.outputs import check_png, make_parent, png_metadata  # noqa: E402
from mot_parallel.sampling_checks import SamplingError  # noqa: E402


def _model(path):
    import mot_parallel
    from mot_parallel.convert.universal import is_universal
    if not os.path.isfile(os.path.join(path, "config.yaml")):
        sys.exit(f"error: {path}: no config.yaml; give a run directory, a universal checkpoint or an export")
    if not is_universal(path) and not os.path.isfile(os.path.join(path, "model.safetensors")):
        path = _export_run(path)
    try:
        return mot_parallel.load_pretrained(path).model
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # ConfigError (a ValueError) is named by the caller
        if isinstance(e, input_errors()):
            raise
        sys.exit(f"error: {path}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def _export_run(run_dir):
    """A run directory: export its newest checkpoint once to <run_dir>/universal_<step>."""
    from mot_parallel.convert.universal import is_universal
    from mot_parallel.training.checkpoint_files import step_dirs
    steps = step_dirs(os.path.join(run_dir, "checkpoints"))
    if not steps:
        sys.exit(f"error: {run_dir}: no checkpoints to sample from")
    out = os.path.join(run_dir, f"universal_{steps[-1][1]}")
    if os.path.lexists(out) and not is_universal(out):
        sys.exit(f"error: {out}: exists and is not a universal checkpoint; move it away to sample from {run_dir}")
    if not os.path.isdir(out):
        import subprocess
        tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "convert_checkpoint.py")
        done = subprocess.run([sys.executable, tool, "to-universal", "--config", os.path.join(run_dir, "config.yaml"),
                               "--checkpoint", os.path.join(run_dir, "checkpoints"), "--out", out],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            said = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            sys.exit(f"error: {run_dir}: exporting its newest checkpoint for sampling failed: "
                     f"{said[-1][len('error: '):] if said else done.stderr.strip()[-300:]}")
    return out


def _picture(model, caption_ids, args, seed):
    from mot_parallel.generation import generate_image
    from mot_parallel.sampling_checks import check_finite
    spec = model.settings.spec("image")
    rgb = spec is not None and spec.source == "pixels" and spec.channels == 3
    if spec is not None and not rgb and args.vae is None:
        raise SamplingError(f"this model samples {spec.source} ({spec.channels} channels): give --vae DIR, the "
                            "diffusers VAE that decodes them")
    patches = generate_image(model, caption_ids, steps=args.steps, cfg_scale=args.cfg, seed=seed)
    check_finite(patches, "the sampled picture")
    if rgb:
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
    fig.savefig(make_parent(path), dpi=100, metadata=png_metadata("sample.py picture"))


def text_tokenizer(args):
    """The TextTokenizer of --tokenizer, of --corpus's sidecar, or of the checkpoint's data.path sidecar; or None."""
    from mot_parallel.config.schema import DEMO_CORPUS
    from mot_parallel.data.indexed import SIDECAR, DataError
    from mot_parallel.data.sidecar import read_sidecar
    from mot_parallel.data.text_tokenizer import load_tokenizer, tokenizer_from_record
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    prefix = args.corpus
    if prefix is None and os.path.isfile(os.path.join(args.checkpoint, "config.yaml")):
        import yaml
        with open(os.path.join(args.checkpoint, "config.yaml"), encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        data = (data.get("data") if isinstance(data, dict) else None) or {}
        path = data.get("path") if isinstance(data, dict) else None
        # one corpus prefix (not a blend, not the demo corpus) may name the tokenizer in its sidecar
        prefix = path if isinstance(path, str) and " " not in path and path != DEMO_CORPUS else None
    if args.corpus is not None and not os.path.isfile(prefix + SIDECAR):
        raise DataError(f"--corpus {prefix}: no {prefix}{SIDECAR}; give the prefix of the corpus the model was "
                        "trained on")
    record = read_sidecar(prefix + SIDECAR).get("tokenizer") if prefix else None
    if args.corpus is not None and not record:
        raise DataError(f"--corpus {prefix}: its sidecar records no tokenizer (built without --tokenizer); pass "
                        "token ids (--caption-ids, --prompt-ids), or demo-world words without --corpus")
    return tokenizer_from_record(record, prefix + SIDECAR) if record else None


def _ids(text, ids, flag, tok=None):
    if ids:
        return ids
    if tok is not None:
        return list(tok.prefix) + tok.encode(text)
    from mot_parallel.corpus_building.demo_corpus import W
    words = text.replace(".", " .").split()
    unknown = [w for w in words if w not in W]
    if unknown or not words:
        raise SamplingError(f"{flag}: {unknown or repr(text)} {'are not demo-world words' if unknown else 'is empty'}; "
                            f"pass token ids with {flag}-ids")
    return [W[w] for w in words]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, type=existing_dir)
    ap.add_argument("--caption")
    ap.add_argument("--caption-ids", type=int_list, help="caption token ids, e.g. 3,17,5")
    ap.add_argument("--prompt")
    ap.add_argument("--prompt-ids", type=int_list)
    ap.add_argument("--tokens", type=int_in(1, 1 << 16), default=16, help="text tokens to generate")
    ap.add_argument("--score", type=int_in(1, 10000), help="sample and score N random demo captions")
    ap.add_argument("--steps", type=int_in(1, 100000), default=50,
                    help="DDIM steps (at most the model's diffusion.timesteps)")
    ap.add_argument("--cfg", type=float_in(0.0, 100.0), default=3.0,
                    help="classifier-free guidance scale (1 = none)")
    ap.add_argument("--seed", type=seed, default=0)
    ap.add_argument("--vae", type=existing_dir, help="a local diffusers VAE directory (latent models)")
    ap.add_argument("--corpus", help="a corpus prefix whose sidecar names the text tokenizer")
    ap.add_argument("--tokenizer", type=existing_path,
                    help="a local text tokenizer (tokenizer.json or a tokenizer directory)")
    ap.add_argument("--out", help="PNG to write (default sample.png for --caption)")
    add_overwrite(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not (args.caption or args.caption_ids or args.prompt or args.prompt_ids or args.score):
        sys.exit("error: give --caption, --prompt or --score")
    out = args.out or ("sample.png" if args.caption or args.caption_ids else None)
    with user_errors():  # a picture goes to a new file (or an earlier one of ours, with --overwrite)
        if out:
            check_png("--out", out, [("--checkpoint", args.checkpoint), ("--vae", args.vae),
                                     ("--tokenizer", args.tokenizer), ("--corpus", args.corpus)], args.overwrite)
    try:
        _sample(args, out)
    except SamplingError as e:
        sys.exit(f"error: {e}")


def _sample(args, out):
    with user_errors():
        tok = text_tokenizer(args)
    prompt = _ids(args.prompt, args.prompt_ids, "--prompt", tok) if args.prompt or args.prompt_ids else None
    caption = _ids(args.caption, args.caption_ids, "--caption", tok) if args.caption or args.caption_ids else None
    with user_errors():
        model = _model(args.checkpoint)
        if prompt is not None:
            from mot_parallel.generation import generate_text
            from mot_parallel.corpus_building.demo_corpus import WORDS
            ids = generate_text(model, prompt, args.tokens, stop_token=tok.eod if tok is not None else None)
            if tok is not None and args.prompt:
                print(tok.decode([i for i in ids if i < tok.vocab_size]))
            else:
                print(" ".join(WORDS[i] if i < len(WORDS) else str(i) for i in ids) if args.prompt else ids)
        if caption is not None:
            rgb = _picture(model, caption, args, args.seed)
            _save([rgb], out)
            print(f"wrote {out}")
        if args.score:
            res, pictures = _score(model, args)
            if out:
                _save(pictures, out)
            print(json.dumps(res, indent=1) if args.json else
                  f"{res['samples']} samples: colour right {res['colour_accuracy']:.0%} (chance 12.5%), "
                  f"picture in the named half {res['half_accuracy']:.0%} (chance 50%)")


if __name__ == "__main__":
    main()
