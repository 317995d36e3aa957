"""Sample from a trained model: text for a prompt, pictures for captions (DDIM with classifier-free guidance).

    python tools/sample.py --checkpoint runs/demo_transfusion --caption "the picture shows two large red star at the top ." --out red.png
    python tools/sample.py --checkpoint runs/demo_transfusion --prompt "the picture shows" --tokens 12
    python tools/sample.py --checkpoint runs/demo_transfusion --score 64 [--out grid.png] [--json]
    python tools/sample.py --checkpoint runs/demo_transfusion --score 8 --trajectory forming.png
    python tools/sample.py --checkpoint runs/demo_transfusion --probe 64 [--json]

--checkpoint: a run directory (its newest checkpoint is exported to a universal checkpoint next to it first),
a universal checkpoint, or a single-file export. Captions and prompts are text for the tokenizer the training
corpus was built with (tools/preprocess_data.py --tokenizer records it in the corpus sidecar: found through the
checkpoint's data.path, or --corpus PREFIX, or given as --tokenizer PATH; generation stops at its EOD), else
demo-world words (mot_parallel/corpus_building/demo_corpus.py); any vocabulary takes token ids (--caption-ids 3,17,5).
--score N draws N demo captions held out from training (corpus_building/demo_pictures.py), samples a picture for each
(--batch at a time) and checks colour, half, shape, count and size against the caption
(studies/picture_score.py): it prints each accuracy with its standard error, next to chance and to the same
pictures scored against mismatched captions; --out then writes the samples under their ground-truth renders.
--trajectory PNG (with --caption or --score) draws how the first 8 pictures form: their clean estimates at 8 of
the DDIM steps, one row per step labelled t (under the ground truths with --score).
--probe N noises the ground-truth renders of N held-out captions to 0.8, 0.65, 0.5, 0.35 and 0.2 of T and prints
the model's clean-picture error under the right caption, with its shape or colour word changed, and without it
(studies/denoiser_probe.py): how much the caption's shape word helps at each noise level, without sampling.
Pictures are decoded from their patches: pixels directly, latents with --vae DIR (a local diffusers VAE).
"""
import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import (add_overwrite, child_error, existing_dir, existing_path, float_in,  # noqa: E402
                               input_errors, int_in, int_list, seed, user_errors)
from mot_parallel.studies.png_files import check_png  # noqa: E402
from mot_parallel.outputs import refuse_overlap  # noqa: E402
from mot_parallel.studies.picture_grid import save_grid, save_trajectory  # noqa: E402
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
            sys.exit(child_error(f"{run_dir}: exporting its newest checkpoint for sampling failed", done.stderr))
    return out


TRAJECTORY_ROWS, TRAJECTORY_PICTURES = 8, 8   # --trajectory: steps shown, pictures shown


def _pictures(model, captions, args, seeds, trajectory=None):
    """RGB pictures in [0, 1] for caption token ids, sampled --batch at a time. A `trajectory` list receives
    (t, [RGB]) for the first TRAJECTORY_PICTURES pictures at TRAJECTORY_ROWS of the steps."""
    from mot_parallel.generation import generate_images
    from mot_parallel.sampling_checks import check_finite
    spec = model.settings.spec("image")
    rgb = spec is not None and spec.source == "pixels" and spec.channels == 3
    if spec is not None and not rgb and args.vae is None:
        raise SamplingError(f"this model samples {spec.source} ({spec.channels} channels): give --vae DIR, the "
                            "diffusers VAE that decodes them")

    def decode(patches):
        if rgb:
            from mot_parallel.corpus_building.demo_pictures import from_patches
            return from_patches(patches.numpy(), spec.patch, spec.grid)
        from mot_parallel.data.images import decode_patches  # latents: a VAE decodes them
        return decode_patches(patches.numpy(), spec, args.vae) / 255.0

    def record(t, x0):
        if t in shown:
            check_finite(x0, "a clean estimate")
            # i (this batch's first picture) pictures are in frames[t] already
            frames.setdefault(t, []).extend(decode(p) for p in x0[:TRAJECTORY_PICTURES - i].cpu())
    shown = _trajectory_steps(model, args.steps) if trajectory is not None else ()
    frames, out = {}, []
    for i in range(0, len(captions), args.batch):
        watch = record if shown and i < TRAJECTORY_PICTURES else None
        for patches in generate_images(model, captions[i:i + args.batch], steps=args.steps, cfg_scale=args.cfg,
                                       seeds=seeds[i:i + args.batch], on_step=watch):
            check_finite(patches, "the sampled picture")
            out.append(decode(patches))
    if trajectory is not None:
        trajectory.extend(sorted(frames.items(), reverse=True))   # rows from T-1 down
    return out


def _trajectory_steps(model, steps):
    """The timesteps --trajectory shows: TRAJECTORY_ROWS of the DDIM schedule, evenly spaced, first and last."""
    from mot_parallel.model.diffusion import ddim_timesteps
    if not 1 <= steps <= model.settings.diffusion_timesteps:
        return set()   # generate_images refuses these --steps by name
    schedule = ddim_timesteps(model.settings.diffusion_timesteps, steps)
    picks = np.linspace(0, len(schedule) - 1, min(TRAJECTORY_ROWS, len(schedule))).round().astype(int)
    return {schedule[i] for i in picks}


def _demo_canvas(spec) -> bool:
    """Whether a continuous modality's pictures (grid x patch pixels) are the demo world's SIDE x SIDE."""
    from mot_parallel.corpus_building.demo_pictures import SIDE
    return tuple(g * spec.patch for g in spec.grid) == (SIDE, SIDE)


def _score(model, args, trajectory=None):
    """Pictures for --score captions of the demo world (held out from training unless --score-captions train),
    scored on colour, half, shape, count and size (studies/picture_score.py)."""
    from mot_parallel.corpus_building.demo_pictures import SIDE, held_out_captions, render, training_caption
    from mot_parallel.studies.picture_score import score_pictures
    spec = model.settings.spec("image")
    if spec is not None and spec.source == "pixels" and not _demo_canvas(spec):
        raise SamplingError(f"--score checks pictures of the demo world's {SIDE} x {SIDE} canvas: this model draws "
                            f"{spec.grid[0] * spec.patch} x {spec.grid[1] * spec.patch} (model.continuous.image grid "
                            "x patch); sample its pictures with --caption instead")
    if args.score_captions == "held-out":
        captions = held_out_captions(args.score, args.seed)
    else:
        rng = np.random.default_rng([args.seed, 7])
        captions = [training_caption(rng) for _ in range(args.score)]
    pictures = _pictures(model, [ids for ids, _ in captions], args, [args.seed + k for k in range(args.score)],
                         trajectory)
    attrs = [a for _, a in captions]
    if pictures[0].shape != (SIDE, SIDE, 3):   # latents: known once the VAE has decoded them
        raise SamplingError(f"--score checks RGB pictures of the demo world's {SIDE} x {SIDE} canvas: this model's "
                            f"decode to {' x '.join(map(str, pictures[0].shape))}; sample them with --caption instead")
    table = score_pictures(pictures, attrs)
    truths = [render(a, np.random.default_rng([args.seed, k])) for k, a in enumerate(attrs)]
    res = {"samples": args.score, "captions": args.score_captions, "steps": args.steps, "cfg_scale": args.cfg,
           "checks": table}
    return res, pictures, truths


def _probe(model, args):
    """--probe: studies/denoiser_probe.py on the renders of --probe held-out demo captions."""
    import torch
    from mot_parallel.corpus_building.demo_pictures import SIDE, held_out_captions, render, to_patches
    from mot_parallel.generation import clean_estimator
    from mot_parallel.model.diffusion import cosine_alpha_bar
    from mot_parallel.studies.denoiser_probe import probe_denoiser
    spec = model.settings.spec("image")
    if spec is None or spec.source != "pixels" or spec.channels != 3 or not _demo_canvas(spec):
        raise SamplingError(f"--probe reads the picture demo's {SIDE} x {SIDE} RGB pixels: this model's continuous "
                            "image modality is not that (model.continuous.image: source pixels, 3 channels, grid "
                            f"{SIDE} / patch)")
    attrs = [a for _, a in held_out_captions(args.probe, args.seed)]
    truths = torch.tensor(np.stack([to_patches(render(a, np.random.default_rng([args.seed, k])), spec.patch)
                                    for k, a in enumerate(attrs)]))
    rows = probe_denoiser(clean_estimator(model, batch=args.batch), attrs, truths, spec.boi_token,
                          cosine_alpha_bar(model.settings.diffusion_timesteps), seed=args.seed)
    return {"pictures": args.probe, "captions": "held-out", "rows": rows}


def _print_probe(res):
    print(f"clean-picture MSE of {res['pictures']} noised held-out renders, by caption (gap: changed - right):")
    print(f"{'t':>5} {'right':>8} {'shape':>8} {'colour':>8} {'none':>8} {'gap/shape':>10} {'gap/colour':>11}")
    for r in res["rows"]:
        print(f"{r['t']:>5} {r['mse/right']:>8.4f} {r['mse/shape']:>8.4f} {r['mse/colour']:>8.4f} {r['mse/none']:>8.4f} "
              f"{r['gap/shape']:>10.5f} {r['gap/colour']:>11.5f}")


def _print_table(res):
    print(f"{res['samples']} pictures for {res['captions']} captions ({res['steps']} DDIM steps, guidance {res['cfg_scale']}):")
    print(f"{'check':7} {'accuracy':>9} {'stderr':>7} {'chance':>7} {'mismatched':>11}")
    for name, r in res["checks"].items():
        print(f"{name:7} {r['accuracy']:>9.3f} {r['stderr']:>7.3f} {r['chance']:>7.3f} {r['mismatched']:>11.3f}")


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
    ap.add_argument("--score", type=int_in(1, 10000), help="sample and score N demo captions held out from training")
    ap.add_argument("--probe", type=int_in(1, 10000),
                    help="clean-picture errors of N noised held-out renders, per noise level and caption word")
    ap.add_argument("--score-captions", choices=["held-out", "train"], default="held-out",
                    help="draw the --score captions from the held-out ones (default) or from the training ones")
    ap.add_argument("--batch", type=int_in(1, 4096), default=16, help="pictures sampled together")
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
    ap.add_argument("--trajectory", metavar="PNG",
                    help="with --caption or --score: write the clean estimates of the first pictures at 8 of the steps")
    add_overwrite(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    captioned = args.caption is not None or args.caption_ids
    if not (captioned or args.prompt or args.prompt_ids or args.score or args.probe):
        sys.exit("error: give --caption, --prompt, --score or --probe")
    if captioned and args.score:
        sys.exit("error: --caption and --score each write the --out picture: run them one at a time")
    if args.trajectory is not None and not (captioned or args.score):
        sys.exit("error: --trajectory shows how --caption or --score pictures are sampled: give one of them")
    out = args.out if args.out is not None else "sample.png" if captioned else None
    inputs = [("--checkpoint", args.checkpoint), ("--vae", args.vae), ("--tokenizer", args.tokenizer),
              ("--corpus", args.corpus)]
    with user_errors():  # a picture goes to a new file (or an earlier one of ours, with --overwrite)
        for flag, path in (("--out", out), ("--trajectory", args.trajectory)):
            if path is not None:
                check_png(flag, path, inputs, args.overwrite)
        if out is not None and args.trajectory is not None:   # also a hard link, or one inside the other
            refuse_overlap("--trajectory", args.trajectory, [("--out", out)], "the output")
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
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):  # --json: stdout is the JSON
            model = _model(args.checkpoint)
        if prompt is not None:
            from mot_parallel.generation import generate_text
            from mot_parallel.corpus_building.demo_corpus import WORDS
            ids = generate_text(model, prompt, args.tokens, stop_token=tok.eod if tok is not None else None)
            if tok is not None and args.prompt:
                print(tok.decode([i for i in ids if i < tok.vocab_size]))
            else:
                print(" ".join(WORDS[i] if i < len(WORDS) else str(i) for i in ids) if args.prompt else ids)
        said = sys.stderr if args.json else sys.stdout   # --json: stdout is the JSON alone
        trajectory = [] if args.trajectory is not None else None
        if caption is not None:
            (rgb,) = _pictures(model, [caption], args, [args.seed], trajectory)
            print(f"wrote {save_grid([rgb], out)}", file=said)
        if args.score:
            res, pictures, truths = _score(model, args, trajectory)
            if out is not None:
                print(f"wrote {save_grid(pictures, out, truths)}", file=said)
            print(json.dumps(res, indent=1)) if args.json else _print_table(res)
        if trajectory:
            print(f"wrote {save_trajectory(trajectory, args.trajectory, truths if args.score else ())}", file=said)
        if args.probe:
            res = _probe(model, args)
            print(json.dumps(res, indent=1)) if args.json else _print_probe(res)


if __name__ == "__main__":
    main()
