"""Print a corpus document decoded: text as text, images as PNG files or code grids, speech as ids.

    python tools/inspect_corpus.py --corpus data/pairs --doc 3
    python tools/inspect_corpus.py --corpus data/pairs --doc 3 --out inspect/ --json

Everything needed comes from the corpus's sidecar (<prefix>.mot.json, written by tools/preprocess_data.py): the
text tokenizer (its files' hash is checked; --tokenizer gives another path to the same files), the VQ of
discrete image codes or the VAE of continuous latents (--image-tokenizer / --vae to point elsewhere), the token
ranges. Text prints with the ids the preprocessor added marked: <bos> (the tokenizer's own start), <boi>/<eoi>
around images, <eod> at the end. With --out DIR every image segment is written as DIR/doc<N>_seg<K>.png (a code
grid without a VQ as .npy); without it a code grid is printed. --json prints one object instead.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import non_negative_int, user_errors  # noqa: E402


def _save(seg, decoder, out, doc, k):
    """Write an image segment under `out` (refusing to overwrite a file); returns the path or None."""
    rgb = decoder.picture(seg) if ("patches" in seg or "codes" in seg) else None
    if rgb is None and not (isinstance(seg.get("codes"), list) and seg["codes"] and isinstance(seg["codes"][0], list)):
        return None
    path = os.path.join(out, f"doc{doc}_seg{k}.{'png' if rgb is not None else 'npy'}")
    if os.path.exists(path):
        sys.exit(f"error: {path} exists; choose another --out (nothing is overwritten)")
    os.makedirs(out, exist_ok=True)
    if rgb is None:
        np.save(path, np.asarray(seg["codes"], np.int64))
    else:
        from PIL import Image
        Image.fromarray(rgb).save(path)
    return path


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
    ap.add_argument("--out", help="write image segments here (PNG; code grids without a VQ as .npy)")
    ap.add_argument("--tokenizer", help="the text tokenizer (default: the sidecar's; the hash must match)")
    ap.add_argument("--image-tokenizer", help="the VQModel of discrete image codes (default: the sidecar's)")
    ap.add_argument("--vae", help="the VAE of continuous latents (default: the sidecar's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with user_errors():
        from mot_parallel.corpus_building.corpus_decode import CorpusDecoder
        decoder = CorpusDecoder(args.corpus, args.tokenizer, args.image_tokenizer, args.vae)
        segments = decoder.document(args.doc)
        for k, seg in enumerate(segments):
            path = _save(seg, decoder, args.out, args.doc, k) if args.out else None
            if path:
                seg["file"] = path
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
