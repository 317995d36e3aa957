"""Tokenised JSONL documents -> a Megatron indexed dataset (<prefix>.bin/.idx + .mot.json) for MoT.

    python tools/preprocess_data.py --input a.jsonl b.jsonl --output-prefix data/corpus \
        --modalities text image speech --vocab-size 65536 --workers 8
    python tools/preprocess_data.py --input a.jsonl --output-prefix data/corpus --config configs/x.yaml

Each line is one document: a list of segments, or {"segments": [...]}, each segment
{"modality": name, "tokens": [ids]}. Every segment becomes one Megatron "sequence" whose mode is the
modality id (readable with megatron-core's IndexedDataset(prefix, multimodal=True)). Lines are
validated in parallel workers (token ids inside the vocabulary, known modality names, no empty
documents or segments, UTF-8 text); the first error stops the run with file:line and the field, and nothing
is left behind (the output appears only when complete). Bad arguments or inputs give one `error:` line.
"""
import argparse
import multiprocessing as mp
import os
import sys
import time
from itertools import islice

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import checked_config, positive_int  # noqa: E402
from mot_parallel.config.validate import MAX_VOCAB  # noqa: E402
from mot_parallel.data.indexed import DataError, IndexedWriter, token_dtype  # noqa: E402
from mot_parallel.data.jsonl import parse_document  # noqa: E402

_MODS, _VOCAB = (), 0


def _init(mods, vocab):
    global _MODS, _VOCAB  # per-worker constants, set once by the pool initializer
    _MODS, _VOCAB = mods, vocab


def _parse(chunk):
    """[(where, line)] -> [segments] or the first DataError message."""
    out = []
    for where, line in chunk:
        try:
            out.append(parse_document(line, where, _MODS, _VOCAB))
        except DataError as e:
            return str(e)
    return out


def _chunks(paths, size):
    for path in paths:
        with open(path, "rb") as f:  # bytes: the workers decode each line, naming file:line if it is not UTF-8
            lines = ((f"{path}:{n}", line) for n, line in enumerate(f, 1) if line.strip())
            while True:
                chunk = list(islice(lines, size))
                if not chunk:
                    break
                yield chunk


def _settings(args):
    """(modalities, vocab size) from the arguments or --config; exits with 'error: ...' on bad input."""
    mods, vocab = args.modalities, args.vocab_size
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
    return list(mods), vocab


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="JSONL files, concatenated in order")
    ap.add_argument("--output-prefix", required=True)
    ap.add_argument("--config", help="take modalities and vocab size from this config")
    ap.add_argument("--modalities", nargs="+")
    ap.add_argument("--vocab-size", type=positive_int)
    ap.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--chunk", type=positive_int, default=256, help="lines per work item")
    args = ap.parse_args(argv)
    mods, vocab = _settings(args)
    t0 = time.time()
    n_docs, per_mod = 0, np.zeros(len(mods), np.int64)
    try:
        writer = IndexedWriter(args.output_prefix, token_dtype(vocab), multimodal=True)
    except OSError as e:
        sys.exit(f"error: cannot write {args.output_prefix}.bin: {e.strerror}; choose a writable --output-prefix")
    try:
        with mp.get_context("fork").Pool(args.workers, initializer=_init, initargs=(list(mods), vocab)) as pool:
            for result in pool.imap(_parse, _chunks(args.input, args.chunk)):
                if isinstance(result, str):
                    raise DataError(result)
                for doc in result:
                    writer.add_document(doc)
                    n_docs += 1
                    for toks, m in doc:
                        per_mod[m] += len(toks)
        if n_docs == 0:
            raise DataError(f"{', '.join(args.input)}: no documents")
        writer.close({"format": "mot_parallel/1", "modalities": list(mods), "vocab_size": vocab,
                      "documents": n_docs, "tokens": int(per_mod.sum()),
                      "tokens_per_modality": dict(zip(mods, per_mod.tolist())), "sources": args.input})
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
          f"({', '.join(f'{m} {k}' for m, k in zip(mods, per_mod))}) in {dt:.1f} s")


if __name__ == "__main__":
    main()
