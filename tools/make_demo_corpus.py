"""Build the offline demo corpus (text decides image and speech content; see
mot_parallel/corpus_building/demo_corpus.py). Deterministic in --documents and --seed; ~1 s for 4000 documents.

    python tools/make_demo_corpus.py --output-prefix runs/demo_corpus/demo [--documents 4000] [--seed 0]
    python tools/make_demo_corpus.py --jsonl demo.jsonl      # the same documents as JSONL (for preprocess_data)
    ... --variant textured|vague    # docs/fidelity.md's controlled variants (mot_parallel/corpus_building/demo_corpus.py)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import add_overwrite, int_in, seed  # noqa: E402
from mot_parallel.corpus_building.demo_corpus import MODALITIES, VARIANTS, documents, write_demo_corpus  # noqa: E402
from mot_parallel.outputs import CORPUS_DEMO, OutputError, check_corpus, check_files, corpus_files  # noqa: E402

SOURCE = "mot_parallel demo_corpus"  # every JSONL line carries it: the mark --overwrite recognises


def _jsonl_is_ours(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.readline().decode("utf-8")).get("source", "").startswith(SOURCE)
    except (OSError, ValueError, AttributeError):
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-prefix")
    ap.add_argument("--jsonl")
    ap.add_argument("--documents", type=int_in(1, 10 ** 8), default=4000)
    ap.add_argument("--seed", type=seed, default=0)
    ap.add_argument("--variant", choices=VARIANTS, default="caption",
                    help="textured: image backgrounds the caption does not name; vague: captions that leave out "
                         "the object's colour or shape")
    add_overwrite(ap)
    args = ap.parse_args(argv)
    if not args.output_prefix and not args.jsonl:
        sys.exit("error: give --output-prefix and/or --jsonl")
    try:
        if args.output_prefix:
            check_corpus("--output-prefix", args.output_prefix, overwrite=args.overwrite, kind=CORPUS_DEMO)
        if args.jsonl and args.output_prefix and os.path.abspath(args.jsonl) in map(os.path.abspath, corpus_files(
                args.output_prefix)):
            raise OutputError(f"--jsonl {args.jsonl} is one of the --output-prefix files; give another name")
        if args.jsonl:
            check_files("--jsonl", [args.jsonl], lambda: _jsonl_is_ours(args.jsonl), overwrite=args.overwrite)
    except OutputError as e:
        sys.exit(f"error: {e}")
    try:
        _write(args)
    except OSError as e:
        sys.exit(f"error: cannot write {e.filename or args.output_prefix or args.jsonl}: {e.strerror or e}")


def _write(args):
    if args.output_prefix:
        write_demo_corpus(args.output_prefix, args.documents, args.seed, args.variant, overwrite=args.overwrite)
        print(f"wrote {args.output_prefix}.bin/.idx/.mot.json")
    if args.jsonl:
        tmp = f"{args.jsonl}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            for doc in documents(args.documents, args.seed, args.variant):
                f.write(json.dumps({"segments": [{"modality": MODALITIES[m], "tokens": t.tolist()} for t, m in doc],
                                    "source": f"{SOURCE}(seed={args.seed}, variant={args.variant})"}) + "\n")
        os.replace(tmp, args.jsonl)
        print(f"wrote {args.jsonl}")


if __name__ == "__main__":
    main()
