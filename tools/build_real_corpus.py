"""Build the offline real-data corpus (issue 16): handwritten-digit scans with partly informative captions,
Python-stdlib docstring prose, and espeak-ng speech as k-means units, in one shared vocabulary
(mot_parallel/corpus_building/real/). Deterministic: the same arguments on the same software give byte-identical
files; cached: a corpus already built with the same arguments and software is not rebuilt.

    python tools/build_real_corpus.py --output-prefix runs/real_corpus/real [--documents 3000] [--seed 0]
    python tools/build_real_corpus.py ... --force          # rebuild even when up to date

Needs scikit-learn and tokenizers (pip install -e '.[study]') and espeak-ng (apt-get install espeak-ng).
Writes <prefix>.bin/.idx/.mot.json (train on it with configs/real_cpu.yaml), <prefix>.tokenizer.json and
<prefix>.speech_units.npy. The default size takes about a minute on 2 cores.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.cli import add_overwrite, int_in, seed  # noqa: E402
from mot_parallel.outputs import OutputError  # noqa: E402
from mot_parallel.corpus_building.real import (DEFAULT_PREFIX, RealCorpusError, RealCorpusOptions,  # noqa: E402
                                    build_real_corpus)

_DEFAULTS = RealCorpusOptions()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-prefix", default=DEFAULT_PREFIX)
    ap.add_argument("--documents", type=int_in(1, 10 ** 6), default=_DEFAULTS.documents)
    ap.add_argument("--seed", type=seed, default=_DEFAULTS.seed)
    ap.add_argument("--text-vocab", type=int_in(128, 60000), default=_DEFAULTS.text_vocab, help="BPE text ids")
    ap.add_argument("--speech-units", type=int_in(2, 4096), default=_DEFAULTS.speech_units,
                    help="k-means speech units")
    ap.add_argument("--calibration-utterances", type=int_in(2, 10 ** 6), default=_DEFAULTS.calibration_utterances,
                    help="utterances the speech units are fitted on")
    ap.add_argument("--workers", type=int_in(1, 256), default=min(2, os.cpu_count() or 1),
                    help="speech synthesis threads (the output does not depend on it)")
    ap.add_argument("--espeak", default="espeak-ng", help="the espeak-ng program")
    ap.add_argument("--force", action="store_true",
                    help="rebuild even when the corpus is up to date (implies --overwrite)")
    add_overwrite(ap)
    ap.add_argument("--json", action="store_true", help="print the corpus sidecar as JSON at the end")
    args = ap.parse_args(argv)
    opts = RealCorpusOptions(documents=args.documents, seed=args.seed, text_vocab=args.text_vocab,
                             speech_units=args.speech_units, calibration_utterances=args.calibration_utterances)
    try:
        meta = build_real_corpus(args.output_prefix, opts, workers=args.workers, program=args.espeak,
                                 force=args.force, overwrite=args.overwrite)
    except (RealCorpusError, OutputError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
