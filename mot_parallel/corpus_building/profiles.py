"""Document length profiles (no tokens) for planning studies: mix generators and a reader.

Profile JSONL: one document per line, {"segments": [["text", 37], ["image", 1024], ...]}."""
from __future__ import annotations

import json
import os
from typing import List, Sequence, Tuple

import numpy as np

from ..data.indexed import DataError

Profile = List[Tuple[str, int]]


def skewed_mix(n_docs: int, seed: int = 0, text_share: float = 0.6, image_share: float = 0.25) -> List[Profile]:
    """Separate text documents (log-normal lengths, median ~300), images (fixed 1024 tokens) and speech
    documents (uniform 200-3000 tokens), shuffled: the mix whose per-cell counts a naive packer skews."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        r = rng.random()
        if r < text_share:
            docs.append([("text", int(np.clip(rng.lognormal(5.7, 1.0), 8, 20000)))])
        elif r < text_share + image_share:
            docs.append([("image", 1024)])
        else:
            docs.append([("speech", int(rng.integers(200, 3001)))])
    return docs


def heavy_tailed_mix(n_docs: int, seed: int = 0, seq_len: int = 4096, image_share: float = 1 / 3,
                     speech_share: float = 1 / 6) -> List[Profile]:
    """A realistic mix that is hard to balance: text documents log-normal in length (median ~400, up to a
    whole sequence); `image_share` of documents carry one or two 1,024-token images, each with a short
    caption before or after it; `speech_share` are speech segments of 100-1,500 tokens with their
    transcript (about 1/8 of the speech length) before or after. Images are the atomic modality."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        r = rng.random()
        if r < image_share:
            doc: Profile = []
            for _ in range(1 if rng.random() < 0.7 else 2):
                caption = ("text", int(rng.integers(5, 41)))
                doc += [caption, ("image", 1024)] if rng.random() < 0.7 else [("image", 1024), caption]
            docs.append(doc)
        elif r < image_share + speech_share:
            speech = int(rng.integers(100, 1501))
            pair = [("speech", speech), ("text", max(1, speech // 8 + int(rng.integers(-10, 11))))]
            docs.append(pair if rng.random() < 0.7 else pair[::-1])
        else:
            docs.append([("text", int(np.clip(rng.lognormal(6.0, 1.2), 8, seq_len)))])
    return docs


def long_image_mix(n_docs: int, seed: int = 0, seq_len: int = 4096) -> List[Profile]:
    """Image-heavy, with images as long as a sequence: 35% of documents interleave 1-5 captioned images of
    seq_len/16, seq_len/4 or seq_len tokens (probabilities .5/.4/.1: the longest carry 43% of image tokens,
    images ~80% of all tokens); 60% are Pareto-length text (index 1.1, some longer than a sequence); 5% pair
    a short caption with a speech segment (rare speech)."""
    rng, docs = np.random.default_rng(seed), []
    for _ in range(n_docs):
        r = rng.random()
        if r < 0.6:
            docs.append([("text", int(min(3 * seq_len, 5 * (rng.pareto(1.1) + 1))))])
        elif r < 0.95:
            doc: Profile = []
            for _ in range(int(rng.integers(1, 6))):
                doc += [("text", int(rng.integers(2, 50))),
                        ("image", int(rng.choice([seq_len // 16, seq_len // 4, seq_len], p=[.5, .4, .1])))]
            docs.append(doc)
        else:
            docs.append([("text", int(rng.integers(2, 15))), ("speech", int(rng.integers(12, seq_len)))])
    return docs


MIXES = {"heavy": heavy_tailed_mix, "skewed": skewed_mix, "long-images": long_image_mix}  # by --mix name


def read_profiles(path: str) -> List[Profile]:
    """Read a profile JSONL; DataError names file:line for anything else (not UTF-8, not a profile, a length
    outside [1, 2**31))."""
    docs = []
    if not os.path.isfile(path):
        raise DataError(f"{path}: profile file not found")
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                segs = json.loads(line.decode("utf-8"))["segments"]
                doc = [(str(m), int(k)) for m, k in segs]
            except (ValueError, KeyError, TypeError, RecursionError) as e:  # incl. UnicodeDecodeError
                raise DataError(f"{path}:{n}: expected UTF-8 {{\"segments\": [[modality, length], ...]}} "
                                f"({str(e):.100})") from None
            if not doc or any(not 0 < k < 2 ** 31 for _, k in doc):
                raise DataError(f"{path}:{n}: empty document, or a segment length outside [1, 2**31)")
            docs.append(doc)
    if not docs:
        raise DataError(f"{path}: no documents")
    return docs


def modalities_of(docs: Sequence[Profile]) -> List[str]:
    seen = []
    for doc in docs:
        for m, _ in doc:
            if m not in seen:
                seen.append(m)
    return seen
