"""Preprocessing throughput (documents/s) of tools/preprocess_data.py, side by side for 1 and N workers.

    python tools/bench_preprocess.py [--documents 20000] [--pairs 2000] [--workers 2] [--json]

Builds its inputs in a temporary directory, offline: text documents (paragraphs of the Python standard library's
docstrings, JSONL, --json-keys text) through a byte-level BPE of 8,192 ids trained on them with `tokenizers`, and
image-caption pairs (a webdataset shard: key.txt + a 64x64 key.jpg of the demo world's pictures) through a small
random diffusers VQModel (4x downsampling, 256 codes: a 16x16 grid per picture) on the CPU. Each run is the real
tool in a fresh process; the table gives the tool's own documents/s (its summary line: from the first document to
the published corpus, start-up and imports excluded), the speed-up of N workers over 1, and the whole process's
seconds. Needs the 'data' extra.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from mot_parallel.cli import child_error, int_in  # noqa: E402

TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preprocess_data.py")


def _text_inputs(tmp, n):
    from mot_parallel.corpus_building.real import prose
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    paras = [p.text for p in prose.paragraphs()]
    docs = [" ".join(paras[(i * 7 + k) % len(paras)] for k in range(1 + i % 4)) for i in range(n)]
    with open(os.path.join(tmp, "text.jsonl"), "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(paras, trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>", "<|boi|>",
                            "<|eoi|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(os.path.join(tmp, "tok.json"))
    return sum(len(d) for d in docs) / n


def _pair_inputs(tmp, n):
    import torch
    from diffusers import VQModel
    from PIL import Image
    from mot_parallel.corpus_building.demo_corpus import WORDS, _caption
    from mot_parallel.corpus_building.demo_pictures import render
    torch.manual_seed(0)
    VQModel(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, num_vq_embeddings=256, norm_num_groups=8,
            layers_per_block=1, sample_size=64).save_pretrained(os.path.join(tmp, "vq"))
    rng = np.random.default_rng(0)
    with tarfile.open(os.path.join(tmp, "pairs.tar"), "w") as tar:
        for i in range(n):
            ids, attrs = _caption(rng)
            picture = Image.fromarray((render(attrs, rng) * 255).astype(np.uint8)).resize((64, 64))
            buf = io.BytesIO()
            picture.save(buf, format="JPEG", quality=90)
            for ext, data in (("txt", " ".join(WORDS[t] for t in ids).encode()), ("jpg", buf.getvalue())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _run(tmp, kind, workers):
    common = ["--tokenizer", os.path.join(tmp, "tok.json"), "--workers", str(workers)]
    if kind == "text":
        args = ["--input", os.path.join(tmp, "text.jsonl"), "--json-keys", "text"]
    else:
        args = ["--input", os.path.join(tmp, "pairs.tar"), "--json-keys", "txt", "jpg:image", "--image-tokenizer",
                os.path.join(tmp, "vq"), "--image-size", "64", "--boi-token", "<|boi|>", "--eoi-token", "<|eoi|>"]
    prefix = os.path.join(tmp, f"out_{kind}_{workers}")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, TOOL] + args + common + ["--output-prefix", prefix], capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(child_error(f"the {kind} run of preprocess_data failed", out.stderr))
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1], prefix


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--documents", type=int_in(1, 10**7), default=20000, help="text documents")
    ap.add_argument("--pairs", type=int_in(1, 10**6), default=2000, help="image-caption samples")
    ap.add_argument("--workers", type=int_in(1, 1024), default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        import diffusers  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as e:
        sys.exit(f"error: {e.name} is missing: pip install -e '.[data]'")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        chars = _text_inputs(tmp, args.documents)
        _pair_inputs(tmp, args.pairs)
        for kind, n in (("text", args.documents), ("pairs", args.pairs)):
            for workers in sorted({1, args.workers}):
                seconds, summary, _ = _run(tmp, kind, workers)
                rate = float(summary.rsplit("(", 1)[1].split()[0])  # the tool's own documents/s, after start-up
                rows.append({"input": kind, "documents": n, "workers": workers, "process_seconds": round(seconds, 2),
                             "documents_per_s": rate, "summary": summary})
    for kind in ("text", "pairs"):
        mine = [r for r in rows if r["input"] == kind]
        for r in mine:
            r["speedup_vs_1"] = round(r["documents_per_s"] / mine[0]["documents_per_s"], 2)
    if args.json:
        print(json.dumps({"text_chars_per_document": round(chars), "rows": rows}, indent=1))
        return
    print(f"{'input':<8}{'docs':>8}{'workers':>9}{'docs/s':>10}{'vs 1':>7}{'process s':>11}")
    for r in rows:
        print(f"{r['input']:<8}{r['documents']:>8}{r['workers']:>9}{r['documents_per_s']:>10.1f}"
              f"{r['speedup_vs_1']:>7.2f}{r['process_seconds']:>11.2f}")
    print(f"text: {chars:.0f} characters per document; pairs: 64x64 JPEG + caption, 16x16 VQ codes")


if __name__ == "__main__":
    main()
