"""Documents (text, images, ids) -> a Megatron indexed dataset (<prefix>.bin/.idx + .mot.json) for MoT.

    # Megatron's way: raw text through a local Hugging Face tokenizer, EOD appended per document
    python tools/preprocess_data.py --input a.jsonl --json-keys text --tokenizer tok_dir/ --output-prefix data/c
    # image-caption data (Chameleon setting): webdataset shards or parquet, pictures through a VQModel
    python tools/preprocess_data.py --input shard-000.tar shard-001.tar --json-keys txt png,jpg:image \
        --tokenizer tok_dir/ --image-tokenizer vq_dir/ --image-size 256 --output-prefix data/pairs
    python tools/preprocess_data.py --input a.jsonl b.jsonl --output-prefix data/corpus \
        --modalities text image speech --vocab-size 65536 --workers 8
    python tools/preprocess_data.py --input a.jsonl --output-prefix data/corpus --config configs/x.yaml
    # the Transfusion setting: images as continuous patches (VAE latents, or pixels)
    python tools/preprocess_data.py --input pics.jsonl --output-prefix data/pics --modalities text image \
        --vocab-size 65536 --continuous image --vae sd_vae/ --image-size 256 --patch 2 \
        --boi-token 65534 --eoi-token 65535

Each line is one document: a list of segments, or {"segments": [...]}, each segment
{"modality": name, "tokens": [ids]} (or "text", "codes", "image", "latents": mot_parallel/corpus_building/documents.py), or a
record whose --json-keys fields are its segments (mot_parallel/corpus_building/fields.py). Inputs ending in .parquet are
read with pyarrow (columns mapped by --json-keys), .tar/.tar.gz shards as webdataset samples (key.txt/key.json +
key.png/key.jpg, fields named by extension: mot_parallel/corpus_building/sources.py), anything else as JSONL.

Text ("text" segments, or string fields of the text modality) is encoded by --tokenizer, a tokenizer.json file or
a tokenizer directory (AutoTokenizer), with its own special tokens (BOS) at the document's start and EOD (its EOS,
or --eod-token) at its end, as Megatron's --append-eod does; the sidecar records the tokenizer (name, path, vocab
size, sha256 of its files, special ids) so tools/inspect_corpus.py and tools/sample.py decode. Codes of the other
discrete modalities (VQ codes of --image-tokenizer, .npy code grids, speech units) are offset into their token
range: data.modality_token_ranges of --config (Chameleon), or their own slice after the tokenizer's vocabulary
(--codebook-size NAME=K; mot_parallel/corpus_building/token_layout.py). Every segment becomes one Megatron "sequence" whose mode is the
modality id (readable with megatron-core's IndexedDataset(prefix, multimodal=True)). Lines are
validated in parallel workers (token ids inside the vocabulary, known modality names, no empty
documents or segments, UTF-8 text); the first error stops the run with file:line and the field, and nothing
is left behind (the output appears only when complete). Bad arguments or inputs give one `error:` line. The
summary line gives the throughput (documents/s).

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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import add_overwrite, checked_config, int_in, positive_int  # noqa: E402
from mot_parallel.config.validate import MAX_VOCAB  # noqa: E402
from mot_parallel.data.indexed import SIDECAR, DataError, IndexedWriter, token_dtype  # noqa: E402
from mot_parallel.corpus_building.jsonl import ImageToEncode  # noqa: E402
from mot_parallel.outputs import CORPUS_PREPROCESSED, OutputError, check_corpus  # noqa: E402

_PARSER = None


def _init(parser):
    global _PARSER  # the per-worker DocumentParser, set once by the pool initializer (inherited by fork)
    _PARSER = parser


def _parse(work):
    """(directory of the input file, [(where, raw)]) -> [segments] or the first DataError message."""
    base_dir, chunk = work
    out = []
    for where, raw in chunk:
        try:
            out.append(_PARSER.parse(raw, where, base_dir))
        except DataError as e:
            return str(e)
    return out


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
    """(modalities, vocab size or None, config or None) from the arguments or --config; DataError if wrong."""
    mods, vocab, cfg = args.modalities, args.vocab_size, None
    if args.config:
        cfg, _ = checked_config(args.config)
        mods, vocab = mods or cfg.model.modalities, vocab or cfg.model.vocab_size
    if not mods and args.tokenizer:  # Megatron's case: text, and the images the options name
        mods = list(dict.fromkeys(["text"] + (args.continuous or []) +
                                  ([args.image_modality or "image"] if args.image_tokenizer else [])))
    if not mods or not (vocab or args.tokenizer):
        raise DataError("give --modalities and --vocab-size (or --config, or --tokenizer)")
    if len(set(mods)) != len(mods):
        raise DataError(f"--modalities {' '.join(mods)} lists a modality twice")
    if len(mods) > 128:
        raise DataError(f"{len(mods)} modalities; a corpus stores modality ids as int8 (at most 128)")
    if vocab and vocab > MAX_VOCAB:
        raise DataError(f"--vocab-size {vocab} exceeds {MAX_VOCAB}, the largest id an int32 corpus holds")
    for path in args.input:
        if os.path.isdir(path):
            raise DataError(f"{path}: is a directory; give JSONL, parquet or tar files")
        if not os.path.isfile(path):
            raise DataError(f"{path}: input file not found")
        if not os.access(path, os.R_OK):
            raise DataError(f"{path}: not readable (permissions)")
    try:  # a new prefix, or an earlier corpus of ours with --overwrite; never one of the inputs
        check_corpus("--output-prefix", args.output_prefix, [("--input", p) for p in args.input] + [
            ("--config", args.config), ("--vae", args.vae), ("--tokenizer", args.tokenizer),
            ("--image-tokenizer", args.image_tokenizer)], args.overwrite, [f".{m}.patches" for m in mods],
                     kind=CORPUS_PREPROCESSED)
    except OutputError as e:
        raise DataError(str(e)) from None
    return list(mods), vocab, cfg


def _tokenizer(args):
    """The TextTokenizer of --tokenizer (None without), with --boi-token/--eoi-token resolved to ids."""
    tok = None
    if args.tokenizer is not None:
        from mot_parallel.data.text_tokenizer import load_tokenizer
        tok = load_tokenizer(args.tokenizer, args.eod_token)
    elif args.eod_token is not None:
        raise DataError("--eod-token is for --tokenizer (text ids come with no EOD otherwise)")
    for option in ("boi_token", "eoi_token"):
        value = getattr(args, option)
        if value is not None:
            flag = "--" + option.replace("_", "-")
            if tok is not None:
                setattr(args, option, tok.token_id(value, flag) if not value.lstrip("-").isdigit() else int(value))
            elif value.lstrip("-").isdigit():
                setattr(args, option, int(value))
            else:
                raise DataError(f"{flag} {value}: a token string needs --tokenizer; give an id")
    return tok


def _image_settings(args, cfg, mods, vocab):
    """({modality: ImageSpec}, VAE or None) of the continuous modalities; DataError on options that do not fit."""
    from mot_parallel.corpus_building import image_specs
    code_images = args.image_tokenizer is not None or (args.codebook_size is not None and args.grid is not None)
    names = image_specs.continuous_names(args, cfg, mods, code_images)
    if not names:
        return {}, None
    vae = None
    if args.vae is not None:
        from mot_parallel.data.vae import load_vae
        vae = load_vae(args.vae)
    specs = {n: image_specs.resolve(args, cfg, n, vae) for n in names}
    if vae is not None and not any(s.encode for s in specs.values()):
        raise DataError("--vae given, but no continuous modality holds latents")
    image_specs.marker_modality(specs, mods, vocab)
    return specs, vae


def _parser(args):
    """The DocumentParser of the arguments (and the tokenizer, VAE and VQ it needs); DataError if they do not fit."""
    from mot_parallel.corpus_building.documents import DocumentParser
    from mot_parallel.corpus_building.fields import parse_fields
    from mot_parallel.corpus_building.token_layout import build_layout
    args.mods, vocab, cfg = _settings(args)
    args.tokenizer_ = _tokenizer(args)
    continuous = _continuous_names(args, cfg, args.mods)
    layout, args.vq = build_layout(args, cfg, args.mods, continuous, args.tokenizer_, vocab)
    args.vocab = layout.vocab_size
    args.specs, args.vae = _image_settings(args, cfg, args.mods, args.vocab)
    text = args.mods[layout.text_mode] if layout.text_mode is not None else None
    fields = parse_fields(args.json_keys, args.mods, text)
    args.columns = _parquet_columns(args.input, fields)
    args.layout = layout
    return DocumentParser(args.mods, args.vocab, layout, args.specs, fields, args.tokenizer_)


def _continuous_names(args, cfg, mods):
    if args.continuous is not None:
        return list(args.continuous)
    return list(cfg.model.continuous) if cfg is not None else []


def _parquet_columns(paths, fields):
    """{parquet path: the columns to read}, checked before any work."""
    from mot_parallel.corpus_building.sources import input_kind, parquet_columns
    parquet = [p for p in paths if input_kind(p) == "parquet"]
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"{parquet[0]}: parquet input needs pyarrow: pip install -e '.[data]'") from None
    return {p: parquet_columns(p, [f.names for f in fields]) for p in parquet}


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


def _encode(queue, args):
    """Encode the queued (document, segment, ImageToEncode) pictures in place: VAE patch rows for continuous
    modalities, VQ codes (offset into the modality's range) for discrete ones."""
    by_mode = collections.defaultdict(list)
    for item in queue:
        by_mode[item[0][item[1]][1]].append(item)
    for mode, items in by_mode.items():
        if args.mods[mode] in args.specs:
            _encode_latents(items, args)
        else:
            _encode_codes(items, args, args.layout.codes[mode])
    queue.clear()


def _encode_latents(items, args):
    from mot_parallel.corpus_building.image_files import bad_values
    from mot_parallel.corpus_building.vae_encode import encode
    from mot_parallel.data.images import patchify, pixels_to_unit
    pixels = np.stack([pixels_to_unit(img.pixels) for _, _, img in items])
    latents = encode(args.vae, pixels, args.vae_batch)
    for (doc, k, img), z in zip(items, latents):
        spec = args.specs[args.mods[doc[k][1]]]
        if z.shape != spec.array_shape:
            raise DataError(f"{img.where}: {img.field}: the VAE gave latents {list(z.shape)}, expected "
                            f"{list(spec.array_shape)}")
        problem = bad_values(z, spec.dtype)
        if problem:
            raise DataError(f"{img.where}: {img.field}: its latents {problem}")
        doc[k] = (patchify(z, spec.patch).astype(np.float32), doc[k][1])


def _encode_codes(items, args, spec):
    from mot_parallel.corpus_building.image_tokenizer import encode_codes
    codes = encode_codes(args.vq, np.stack([img.pixels for _, _, img in items]), args.vae_batch)
    for (doc, k, img), c in zip(items, codes):
        if tuple(c.shape) != spec.grid:
            raise DataError(f"{img.where}: {img.field}: the VQ gave a {list(c.shape)} code grid, expected "
                            f"{list(spec.grid)}")
        doc[k] = (c.reshape(-1) + spec.first, doc[k][1])


def _length(values, mode, args):
    if not isinstance(values, ImageToEncode):
        return len(values)
    name = args.mods[mode]
    return args.specs[name].num_patches if name in args.specs else int(np.prod(args.layout.codes[mode].grid))


def _write_all(args, writer, pool):
    """Parse, encode and write every document in order; returns (documents, tokens per modality)."""
    from mot_parallel.corpus_building.sources import work_items
    n_docs, per_mod = 0, np.zeros(len(args.mods), np.int64)
    waiting, queue = [], []  # documents whose images are not encoded yet (in order), and those images

    def flush():
        if queue:
            _encode(queue, args)
        for doc in waiting:
            writer.add_document(doc)
        waiting.clear()

    for result in _in_order(pool, work_items(args.input, args.chunk, args.columns), 2 * args.workers):
        if isinstance(result, str):
            raise DataError(result)
        for doc in result:
            n_docs += 1
            for k, (values, m) in enumerate(doc):
                per_mod[m] += _length(values, m, args)
                if isinstance(values, ImageToEncode):
                    queue.append((doc, k, values))
            waiting.append(doc)
            if len(queue) >= args.vae_batch or not queue:
                flush()
    flush()
    return n_docs, per_mod


def _writer(args):
    if not args.specs:
        return IndexedWriter(args.output_prefix, token_dtype(args.vocab), multimodal=True, overwrite=args.overwrite)
    from mot_parallel.data.continuous_store import ContinuousWriter
    continuous = {args.mods.index(n): (n, s.sidecar()) for n, s in args.specs.items()}
    return ContinuousWriter(args.output_prefix, token_dtype(args.vocab), continuous, args.continuous_dtype,
                            overwrite=args.overwrite)


def _sidecar(args, n_docs, per_mod):
    meta = {"format": "mot_parallel/1", "written_by": CORPUS_PREPROCESSED, "modalities": list(args.mods),
            "vocab_size": args.vocab,
            "documents": n_docs, "tokens": int(per_mod.sum()),
            "tokens_per_modality": dict(zip(args.mods, per_mod.tolist())), "sources": args.input}
    if args.tokenizer_ is not None:
        meta["tokenizer"] = args.tokenizer_.record()
    if args.layout.codes:
        meta["token_ranges"] = args.layout.token_ranges(args.mods)
        images = {s.name: s.sidecar() for s in args.layout.codes.values() if s.grid}
        if images:
            meta["image_codes"] = images
    return meta


def _arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="JSONL, parquet or webdataset .tar files, in order")
    ap.add_argument("--output-prefix", required=True)
    add_overwrite(ap)
    ap.add_argument("--config", help="take modalities, vocab size, model.continuous and data.modality_token_ranges "
                                     "from this config")
    ap.add_argument("--modalities", nargs="+")
    ap.add_argument("--vocab-size", type=positive_int, help="default with --tokenizer: the layout's end")
    ap.add_argument("--workers", type=int_in(1, 1024), default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--chunk", type=int_in(1, 1 << 20), help="documents per work item (default 256; 16 with images)")
    text = ap.add_argument_group("text and records (Megatron's preprocess_data options)")
    text.add_argument("--tokenizer", "--tokenizer-model", metavar="PATH",
                      help="a local Hugging Face tokenizer: a tokenizer.json file or a tokenizer directory")
    text.add_argument("--tokenizer-type", choices=["HuggingFaceTokenizer"],
                      help="accepted for Megatron command lines; the only kind is a Hugging Face tokenizer")
    text.add_argument("--json-keys", nargs="+", metavar="FIELD[:MODALITY]",
                      help="record fields (JSON keys, parquet columns, tar member extensions) that form a document, "
                           "in order; FIELD may be a,b (the first present); default: text")
    text.add_argument("--append-eod", action=argparse.BooleanOptionalAction, default=True,
                      help="end every document with EOD (with --tokenizer; default on, as Megatron's --append-eod)")
    text.add_argument("--eod-token", metavar="TOKEN", help="EOD: an id or a token (default: the tokenizer's EOS)")
    codes = ap.add_argument_group("discrete codes (the Chameleon setting: image codes in the one vocabulary)")
    codes.add_argument("--image-tokenizer", metavar="DIR", help="a diffusers VQModel directory (save_pretrained)")
    codes.add_argument("--image-modality", help="the discrete modality of the image codes (default: image)")
    codes.add_argument("--codebook-size", nargs="+", metavar="MODALITY=K",
                       help="codes per modality given as codes (.npy grids, speech units); a VQ gives its own")
    images = ap.add_argument_group("continuous (image) modalities, the Transfusion setting")
    images.add_argument("--continuous", nargs="+", metavar="MODALITY", help="modalities stored as patch vectors")
    images.add_argument("--source", choices=["latents", "pixels"], help="VAE latents (default with --vae) or RGB")
    images.add_argument("--vae", metavar="DIR", help="a diffusers AutoencoderKL directory (save_pretrained)")
    images.add_argument("--image-size", nargs="+", type=positive_int, metavar="PX",
                        help="height [width] in pixels (at most 8192)")
    images.add_argument("--patch", type=positive_int, help="patch side, in latent cells (or pixels)")
    images.add_argument("--channels", type=int_in(1, 4096), help="latent channels (precomputed latents without --vae)")
    images.add_argument("--grid", nargs="+", type=positive_int, metavar="N",
                        help="patches (or codes) per image, rows [cols]")
    images.add_argument("--boi-token", help="id (or, with --tokenizer, token) inserted before every image")
    images.add_argument("--eoi-token", help="id (or token) inserted after every image")
    images.add_argument("--continuous-dtype", choices=["float16", "float32"], default="float16")
    images.add_argument("--vae-batch", type=int_in(1, 4096), default=16, help="images per VAE/VQ forward")
    return ap.parse_args(argv)


def main(argv=None):
    args = _arguments(argv)
    try:
        parser = _parser(args)
    except DataError as e:
        sys.exit(f"error: {e}")
    args.chunk = args.chunk or (16 if args.specs or args.vq is not None else 256)
    remove_stale_temp_files(args.output_prefix, args.mods)
    t0 = time.time()
    try:
        writer = _writer(args)
    except OSError as e:
        sys.exit(f"error: cannot write {args.output_prefix}.bin: {e.strerror}; choose a writable --output-prefix")
    except OutputError as e:  # appeared since the check
        sys.exit(f"error: {e}")
    try:
        with mp.get_context("fork").Pool(args.workers, initializer=_init, initargs=(parser,)) as pool:
            n_docs, per_mod = _write_all(args, writer, pool)
        if n_docs == 0:
            raise DataError(f"{', '.join(args.input)}: no documents")
        writer.close(_sidecar(args, n_docs, per_mod))
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
          f"({', '.join(f'{m} {k}' for m, k in zip(args.mods, per_mod))}) in {dt:.1f} s "
          f"({n_docs / max(dt, 1e-9):.0f} documents/s, {args.workers} workers)")


if __name__ == "__main__":
    main()
