"""The real-data corpus (issue 16): handwritten-digit scans with partly informative captions, English
prose from the Python standard library's docstrings, and espeak-ng speech quantised into k-means units,
mixed into caption->image, image->caption, sentence->speech, interleaved and prose documents.

    python tools/build_real_corpus.py --output-prefix runs/real_corpus/real   (README, Data)

Modules: prose (docstrings -> paragraphs, chunks, sentences), tokenizer (BPE), digits (scans, captions),
speech (espeak-ng, log-mel), units (k-means, run collapsing), plan (documents), build (all of it, cached).
"""
from .build import DEFAULT_PREFIX, MODALITIES, RealCorpusOptions, build_real_corpus
from .errors import RealCorpusError

__all__ = ["DEFAULT_PREFIX", "MODALITIES", "RealCorpusError", "RealCorpusOptions", "build_real_corpus"]
