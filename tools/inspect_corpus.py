"""Print a corpus document decoded: text as text, images as PNG files or code grids, speech as ids.

    python tools/inspect_corpus.py --corpus data/pairs --doc 3
    python tools/inspect_corpus.py --corpus data/pairs --doc 3 --out inspect/ --json

Everything needed comes from the corpus's sidecar (<prefix>.mot.json, written by tools/preprocess_data.py): the
text tokenizer (its files' hash is checked; --tokenizer gives another path to the same files), the VQ of
discrete image codes or the VAE of continuous latents (--image-tokenizer / --vae to point elsewhere), the token
ranges. Text prints with the ids the preprocessor added marked: <bos> (the tokenizer's own start), <boi>/<eoi>
around images, <eod> at the end. With --out DIR every image segment is written as DIR/doc<N>_seg<K>.png (a code
grid without a VQ as .npy); without it a code grid is printed. --json prints one object instead. DIR is new or an
earlier --out of this tool (marked; a file there is replaced only with --overwrite), never one of the inputs.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import add_overwrite, existing_dir, existing_path, non_negative_int, user_errors  # noqa: E402
from mot_parallel.outputs import OutputError, check_own_dir, claim_scratch, corpus_files, refuse_overlap  # noqa: E402


KIND = "picture directory (inspect_corpus)"


def _pictures(segments, decoder, doc):
    """{file name: uint8 RGB picture or int64 code grid} of the document's image segments (decoded before any file
    is written, so a decoding error leaves nothing behind)."""
    out = {}
    for k, seg in enumerate(segments):
        rgb = decoder.picture(seg) if ("patches" in seg or "codes" in seg) else None
        grid = seg.get("codes")
        if rgb is not None:
            out[k] = (f"doc{doc}_seg{k}.png", rgb)
        elif isinstance(grid, list) and grid and isinstance(grid[0], list):
            out[k] = (f"doc{doc}_seg{k}.npy", np.asarray(grid, np.int64))
    return out


def _inputs(args, decoder):
    """Every file or directory the decoding reads: the corpus, and the tokenizer, VQ and VAE (given or recorded)."""
    meta = decoder.meta
    recorded = [("the sidecar's tokenizer.path", (meta.get("tokenizer") or {}).get("path"))]
    recorded += [(f"the sidecar's image_codes.{n}.vq", e.get("vq")) for n, e in (meta.get("image_codes") or {}).items()]
    recorded += [(f"the sidecar's continuous.{n}.vae", e.get("vae")) for n, e in (meta.get("continuous") or {}).items()]
    given = [("--tokenizer", args.tokenizer), ("--image-tokenizer", args.image_tokenizer), ("--vae", args.vae)]
    return [("--corpus", f) for f in corpus_files(args.corpus)] + given + recorded


def _write(pictures, segments, out, overwrite):
    """Write the pictures into `out` (new, empty, or an earlier output of this tool): a file that exists is
    replaced only with --overwrite, and only inside a directory this tool marked."""
    if not pictures:
        return
    there = [name for name, _ in pictures.values() if os.path.lexists(os.path.join(out, name))]
    if there and not overwrite:
        raise OutputError(f"--out {out}: {there[0]} exists; add --overwrite to replace it, or choose another --out")
    if any(os.path.islink(os.path.join(out, name)) for name in there):
        raise OutputError(f"--out {out}: {there[0]} is a symbolic link; it is never written through")
    claim_scratch(out, KIND, "--out")
    for k, (name, data) in pictures.items():
        path = os.path.join(out, name)
        if name.endswith(".npy"):
            np.save(path, data)
        else:
            from PIL import Image
            Image.fromarray(data).save(path)
        segments[k]["file"] = path


def _line(seg):
    head = f"{seg['modality']} ({seg['length']} tokens)"
    if "text" in seg:
        marks = seg["marks"]
        return f"{head}: {''.join(marks['before'])}{repr(seg['text']) if seg['text'] else ''}{''.join(marks['after'])}"
    if "file" in seg:
        return f"{head}: {seg['file']}"
    if "patches" in seg:
        return f"{head}: {len(seg['patches'])} patches (give --out DIR for the picture)"
    if isinstance(seg.get("codes"), list) and seg["codes"] and isinstance(seg["codes"][0], list):
        grid = seg["codes"]
        rows = "\n".join("    " + " ".join(f"{c:>{len(str(max(map(max, grid))))}}" for c in row) for row in grid)
        return f"{head}: a {len(grid)}x{len(grid[0])} code grid\n{rows}"
    if "codes" in seg:
        return f"{head}: ids {seg['ids']} (codes {seg['codes']})"
    return f"{head}: ids {seg['ids']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="the corpus prefix (<prefix>.bin/.idx/.mot.json)")
    ap.add_argument("--doc", type=non_negative_int, default=0, help="document number (0-based)")
    ap.add_argument("--out", help="write image segments into this directory (PNG; code grids without a VQ as .npy)")
    add_overwrite(ap)
    ap.add_argument("--tokenizer", type=existing_path,
                    help="the text tokenizer (default: the sidecar's; the hash must match)")
    ap.add_argument("--image-tokenizer", type=existing_dir,
                    help="the VQModel of discrete image codes (default: the sidecar's)")
    ap.add_argument("--vae", type=existing_dir, help="the VAE of continuous latents (default: the sidecar's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with user_errors():
        if args.out:  # a new directory, or one this tool wrote; never one of the inputs (checked again below)
            refuse_overlap("--out", args.out, [("--corpus", f) for f in corpus_files(args.corpus)] + [
                ("--tokenizer", args.tokenizer), ("--image-tokenizer", args.image_tokenizer), ("--vae", args.vae)])
            check_own_dir("--out", args.out, KIND)
        from mot_parallel.corpus_building.corpus_decode import CorpusDecoder
        decoder = CorpusDecoder(args.corpus, args.tokenizer, args.image_tokenizer, args.vae)
        segments = decoder.document(args.doc)
        if args.out:
            refuse_overlap("--out", args.out, _inputs(args, decoder))
            _write(_pictures(segments, decoder, args.doc), segments, args.out, args.overwrite)
    if args.json:
        for seg in segments:
            seg.pop("patches", None)
        print(json.dumps({"corpus": args.corpus, "document": args.doc, "documents": decoder.num_docs,
                          "segments": segments}))
        return
    print(f"{args.corpus}: document {args.doc} of {decoder.num_docs}, {len(segments)} segments, "
          f"{sum(s['length'] for s in segments)} tokens")
    for k, seg in enumerate(segments):
        print(f"[{k}] {_line(seg)}")


if __name__ == "__main__":
    main()
