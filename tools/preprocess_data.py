"""Tokenised JSONL documents (and images) -> a Megatron indexed dataset (<prefix>.bin/.idx + .mot.json) for MoT.

    python tools/preprocess_data.py --input a.jsonl b.jsonl --output-prefix data/corpus \
        --modalities text image speech --vocab-size 65536 --workers 8
    python tools/preprocess_data.py --input a.jsonl --output-prefix data/corpus --config configs/x.yaml
    # the Transfusion setting: images as continuous patches (VAE latents, or pixels)
    python tools/preprocess_data.py --input pics.jsonl --output-prefix data/pics --modalities text image \
        --vocab-size 65536 --continuous image --vae sd_vae/ --image-size 256 --patch 2 \
        --boi-token 65534 --eoi-token 65535

Each line is one document: a list of segments, or {"segments": [...]}, each segment
{"modality": name, "tokens": [ids]}. Every segment becomes one Megatron "sequence" whose mode is the
modality id (readable with megatron-core's IndexedDataset(prefix, multimodal=True)). Lines are
validated in parallel workers (token ids inside the vocabulary, known modality names, no empty
documents or segments, UTF-8 text); the first error stops the run with file:line and the field, and nothing
is left behind (the output appears only when complete). Bad arguments or inputs give one `error:` line.

Continuous modalities (--continuous NAME, or model.continuous of --config) take image segments instead,
{"modality": "image", "image": "a.png"} or {"modality": "image", "latents": "a.npy"}, paths relative to
the JSONL file. An image file is read with Pillow (RGB, scaled to cover --image-size and centre-cropped)
and either kept as pixels in [-1, 1] (--source pixels) or encoded by the diffusers AutoencoderKL in the
local directory --vae (batched, on the current accelerator or the CPU): the latents are the MEAN of the
latent distribution times the VAE's scaling_factor (minus its shift first, if it has one). A .npy holds
precomputed latents [channels, grid_h*patch, grid_w*patch] (float, no pickles). Each image is cut into
patch x patch patches (mot_parallel/data/images.py) stored in <prefix>.<modality>.patches
(--continuous-dtype), and the sidecar records channels, patch, grid and source so a config is checked
against the corpus. BOI/EOI: when the config or --boi-token/--eoi-token give marker ids, they are inserted
as tokens of the first discrete modality (text) before and after every image segment.

A run killed earlier leaves <prefix>.bin.tmp.<pid> (and .idx/.mot.json/.<modality>.patches .tmp.<pid>):
such temporary files of this prefix whose process is gone are removed at start.
"""
import argparse
import collections
import multiprocessing as mp
import os
import re
import sys
import time
from itertools import islice

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import add_overwrite, checked_config, int_in, non_negative_int, positive_int  # noqa: E402
from mot_parallel.config.validate import MAX_VOCAB  # noqa: E402
from mot_parallel.data.indexed import SIDECAR, DataError, IndexedWriter, token_dtype  # noqa: E402
from mot_parallel.data.jsonl import ImageToEncode, parse_document  # noqa: E402
from mot_parallel.outputs import OutputError, check_corpus  # noqa: E402

_MODS, _VOCAB, _IMAGES, _MARKER = (), 0, {}, None


def _init(mods, vocab, images, marker):
    global _MODS, _VOCAB, _IMAGES, _MARKER  # per-worker constants, set once by the pool initializer
    _MODS, _VOCAB, _IMAGES, _MARKER = mods, vocab, images, marker


def _parse(work):
    """(directory of the JSONL file, [(where, line)]) -> [segments] or the first DataError message."""
    base_dir, chunk = work
    out = []
    for where, line in chunk:
        try:
            out.append(parse_document(line, where, _MODS, _VOCAB, _IMAGES, base_dir, _MARKER))
        except DataError as e:
            return str(e)
    return out


def _chunks(paths, size):
    for path in paths:
        base_dir = os.path.dirname(os.path.abspath(path))
        with open(path, "rb") as f:  # bytes: the workers decode each line, naming file:line if it is not UTF-8
            lines = ((f"{path}:{n}", line) for n, line in enumerate(f, 1) if line.strip())
            while True:
                chunk = list(islice(lines, size))
                if not chunk:
                    break
                yield base_dir, chunk


def _in_order(pool, work, ahead):
    """pool.imap with at most `ahead` chunks parsed but not yet consumed (decoded images wait in memory)."""
    pending = collections.deque()
    for item in work:
        pending.append(pool.apply_async(_parse, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _settings(args):
    """(modalities, vocab size, config or None) from the arguments or --config; exits with 'error: ...'."""
    mods, vocab, cfg = args.modalities, args.vocab_size, None
    if args.config:
        cfg, _ = checked_config(args.config)
        mods, vocab = mods or cfg.model.modalities, vocab or cfg.model.vocab_size
    if not mods or not vocab:
        sys.exit("error: give --modalities and --vocab-size (or --config)")
    if len(set(mods)) != len(mods):
        sys.exit(f"error: --modalities {' '.join(mods)} lists a modality twice")
    if len(mods) > 128:
        sys.exit(f"error: {len(mods)} modalities; a corpus stores modality ids as int8 (at most 128)")
    if vocab > MAX_VOCAB:
        sys.exit(f"error: --vocab-size {vocab} exceeds {MAX_VOCAB}, the largest id an int32 corpus holds")
    for path in args.input:
        if os.path.isdir(path):
            sys.exit(f"error: {path}: is a directory; give JSONL files")
        if not os.path.isfile(path):
            sys.exit(f"error: {path}: input file not found")
        if not os.access(path, os.R_OK):
            sys.exit(f"error: {path}: not readable (permissions)")
    try:  # a new prefix, or an earlier corpus of ours with --overwrite; never one of the inputs
        check_corpus("--output-prefix", args.output_prefix, [("--input", p) for p in args.input] + [
            ("--config", args.config), ("--vae", args.vae)], args.overwrite, [f".{m}.patches" for m in mods])
    except OutputError as e:
        sys.exit(f"error: {e}")
    return list(mods), vocab, cfg


def _image_settings(args, cfg, mods, vocab):
    """({modality: ImageSpec}, marker modality id, VAE or None); DataError on options that do not fit."""
    from mot_parallel.data import image_specs
    names = image_specs.continuous_names(args, cfg, mods)
    if not names:
        return {}, None, None
    vae = None
    if args.vae is not None:
        from mot_parallel.data.vae import load_vae
        vae = load_vae(args.vae)
    specs = {n: image_specs.resolve(args, cfg, n, vae) for n in names}
    if vae is not None and not any(s.encode for s in specs.values()):
        raise DataError("--vae given, but no continuous modality holds latents")
    return specs, image_specs.marker_modality(specs, mods, vocab), vae


def remove_stale_temp_files(prefix, modalities):
    """Delete <prefix>{.bin,.idx,.mot.json,.<m>.patches}.tmp.<pid> left by a process that no longer exists."""
    folder, base = os.path.split(os.path.abspath(prefix))
    ours = {".bin", ".idx", SIDECAR} | {f".{m}.patches{c}" for m in modalities for c in ("", ".checked")}
    pattern = re.compile(re.escape(base) + r"(\..+)\.tmp\.(\d+)$")
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = pattern.match(name)
        if not match or match.group(1) not in ours or _alive(int(match.group(2))):
            continue
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except OSError:  # another run removed it first, or no permission: not ours to worry about
            pass
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (alive), or not a pid at all
        return True
    return True


def _encode(vae, queue, args):
    """Encode the queued (document, segment, ImageToEncode) images in place as patch rows."""
    from mot_parallel.data.images import bad_values, patchify, pixels_to_unit
    from mot_parallel.data.vae import encode
    pixels = np.stack([pixels_to_unit(img.pixels) for _, _, img in queue])
    latents = encode(vae, pixels, args.vae_batch)
    for (doc, k, img), z in zip(queue, latents):
        spec = args.specs[args.mods[doc[k][1]]]
        if z.shape != spec.array_shape:
            raise DataError(f"{img.where}: {img.field}: the VAE gave latents {list(z.shape)}, expected "
                            f"{list(spec.array_shape)}")
        problem = bad_values(z, spec.dtype)
        if problem:
            raise DataError(f"{img.where}: {img.field}: its latents {problem}")
        doc[k] = (patchify(z, spec.patch).astype(np.float32), doc[k][1])
    queue.clear()


def _write_all(args, writer, pool, vae):
    """Parse, encode and write every document in order; returns (documents, tokens per modality)."""
    n_docs, per_mod = 0, np.zeros(len(args.mods), np.int64)
    waiting, queue = [], []  # documents whose images are not encoded yet (in order), and those images

    def flush():
        if queue:
            _encode(vae, queue, args)
        for doc in waiting:
            writer.add_document(doc)
        waiting.clear()

    for result in _in_order(pool, _chunks(args.input, args.chunk), 2 * args.workers):
        if isinstance(result, str):
            raise DataError(result)
        for doc in result:
            n_docs += 1
            for k, (values, m) in enumerate(doc):
                per_mod[m] += args.specs[args.mods[m]].num_patches if isinstance(values, ImageToEncode) \
                    else len(values)
                if isinstance(values, ImageToEncode):
                    queue.append((doc, k, values))
            waiting.append(doc)
            if len(queue) >= args.vae_batch or not queue:
                flush()
    flush()
    return n_docs, per_mod


def _writer(args, vocab):
    if not args.specs:
        return IndexedWriter(args.output_prefix, token_dtype(vocab), multimodal=True, overwrite=args.overwrite)
    from mot_parallel.data.continuous import ContinuousWriter
    continuous = {args.mods.index(n): (n, s.sidecar()) for n, s in args.specs.items()}
    return ContinuousWriter(args.output_prefix, token_dtype(vocab), continuous, args.continuous_dtype,
                            overwrite=args.overwrite)


def _arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="JSONL files, concatenated in order")
    ap.add_argument("--output-prefix", required=True)
    add_overwrite(ap)
    ap.add_argument("--config", help="take modalities, vocab size and model.continuous from this config")
    ap.add_argument("--modalities", nargs="+")
    ap.add_argument("--vocab-size", type=positive_int)
    ap.add_argument("--workers", type=int_in(1, 1024), default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--chunk", type=int_in(1, 1 << 20), help="lines per work item (default 256; 16 with images)")
    images = ap.add_argument_group("continuous (image) modalities, the Transfusion setting")
    images.add_argument("--continuous", nargs="+", metavar="MODALITY", help="modalities stored as patch vectors")
    images.add_argument("--source", choices=["latents", "pixels"], help="VAE latents (default with --vae) or RGB")
    images.add_argument("--vae", metavar="DIR", help="a diffusers AutoencoderKL directory (save_pretrained)")
    images.add_argument("--image-size", nargs="+", type=positive_int, metavar="PX",
                        help="height [width] in pixels (at most 8192)")
    images.add_argument("--patch", type=positive_int, help="patch side, in latent cells (or pixels)")
    images.add_argument("--channels", type=int_in(1, 4096), help="latent channels (precomputed latents without --vae)")
    images.add_argument("--grid", nargs="+", type=positive_int, metavar="N", help="patches per image, rows [cols]")
    images.add_argument("--boi-token", type=non_negative_int, help="id inserted before every image (as a text token)")
    images.add_argument("--eoi-token", type=non_negative_int, help="id inserted after every image")
    images.add_argument("--continuous-dtype", choices=["float16", "float32"], default="float16")
    images.add_argument("--vae-batch", type=int_in(1, 4096), default=16, help="images per VAE forward")
    return ap.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    args.mods, vocab, cfg = _settings(args)
    try:
        args.specs, marker, vae = _image_settings(args, cfg, args.mods, vocab)
    except DataError as e:
        sys.exit(f"error: {e}")
    args.chunk = args.chunk or (16 if args.specs else 256)
    remove_stale_temp_files(args.output_prefix, args.mods)
    t0 = time.time()
    try:
        writer = _writer(args, vocab)
    except OSError as e:
        sys.exit(f"error: cannot write {args.output_prefix}.bin: {e.strerror}; choose a writable --output-prefix")
    except OutputError as e:  # appeared since the check
        sys.exit(f"error: {e}")
    try:
        with mp.get_context("fork").Pool(args.workers, initializer=_init,
                                         initargs=(list(args.mods), vocab, args.specs, marker)) as pool:
            n_docs, per_mod = _write_all(args, writer, pool, vae)
        if n_docs == 0:
            raise DataError(f"{', '.join(args.input)}: no documents")
        meta = {"format": "mot_parallel/1", "modalities": list(args.mods), "vocab_size": vocab,
                "documents": n_docs, "tokens": int(per_mod.sum()),
                "tokens_per_modality": dict(zip(args.mods, per_mod.tolist())), "sources": args.input}
        writer.close(meta)
    except DataError as e:
        writer.abort()
        sys.exit(f"error: {e}")
    except OSError as e:  # disk full, output directory removed, ...
        writer.abort()
        sys.exit(f"error: writing {args.output_prefix}: {e.strerror or e}")
    except BaseException:
        writer.abort()
        raise
    dt = time.time() - t0
    print(f"{args.output_prefix}: {n_docs} documents, {int(per_mod.sum())} tokens "
          f"({', '.join(f'{m} {k}' for m, k in zip(args.mods, per_mod))}) in {dt:.1f} s")


if __name__ == "__main__":
    main()
