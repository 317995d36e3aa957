"""Handwritten digits (scikit-learn's bundled `load_digits`) as image tokens, with partly informative captions.

The scans: 1,797 real 8x8 images from the UCI optdigits set (each pixel counts the inked pixels of a 4x4
block of a 32x32 bitmap, so it takes 17 values, 0-16), shipped inside scikit-learn (no download).

Image tokens: one code per grey level (17 codes), 64 per image in row-major (raster) order. Per-pixel
codes keep the scan lossless: a learned patch codebook (Chameleon's VQ) would only pay off for big images,
and here the structure a model can learn (strokes continue, ink is smooth, a digit's shape) is the real
structure of handwriting. Raster order is how Chameleon-style models read VQ codes.

Captions are only partly informative, so an image carries structure its caption does not determine:
  generic    (20%)  "A handwritten digit."                        nothing about the image
  named      (50%)  "A handwritten seven." / "The digit seven."   the class only
  qualified  (30%)  "A thick seven, slanted to the right."        the class and what the scan shows
Qualifiers are measured on the scan, relative to the scans of the same digit: stroke weight (total ink;
"thick" above the class's upper tercile, "thin" below its lower one) and slant (the ink's shear,
cov(column, row) / var(row); right-leaning strokes have the column fall as the row grows). A scan in the
middle tercile of both gets the named caption instead.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import numpy as np

from .errors import RealCorpusError

LEVELS = 17  # grey levels 0..16
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_KINDS = ("generic", "named", "qualified")
CAPTION_P = (0.2, 0.5, 0.3)
_GENERIC = ("A handwritten digit.", "A scanned handwritten number.", "A digit from a handwriting sample.")
_NAMED = ("A handwritten {n}.", "The digit {n}.", "A scanned {n}.", "{N}, written by hand.")


class Scans(NamedTuple):
    images: np.ndarray   # uint8 [n, 8, 8], values 0..16
    labels: np.ndarray   # int64 [n]
    weight: List[Optional[str]]  # "thick" / "thin" / None per scan
    slant: List[Optional[str]]   # "right" / "left" / None per scan


def require_sklearn():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise RealCorpusError("the real-data corpus takes its images from scikit-learn's bundled handwritten "
                              "digits, and scikit-learn is not installed: pip install -e '.[study]'") from e
    return load_digits


def ink_and_slant(images: np.ndarray):
    """Per image: total ink, and shear cov(col, row)/var(row) of the ink (negative = leaning right)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    rows, cols = np.divmod(np.arange(64, dtype=np.float64), 8)
    ink = x.sum(1)
    w = x / np.maximum(ink, 1e-9)[:, None]
    mr, mc = w @ rows, w @ cols
    var_r = w @ rows ** 2 - mr ** 2
    cov = w @ (rows * cols) - mr * mc
    return ink, cov / np.maximum(var_r, 1e-9)


def _terciles(values: np.ndarray, labels: np.ndarray, low: str, high: str) -> List[Optional[str]]:
    out: List[Optional[str]] = [None] * len(values)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        lo, hi = np.quantile(values[idx], [1 / 3, 2 / 3])
        for i in idx:
            out[i] = low if values[i] < lo else high if values[i] > hi else None
    return out


def load_scans() -> Scans:
    data = require_sklearn()()
    images = data.images
    if images.shape[1:] != (8, 8) or images.min() < 0 or images.max() >= LEVELS or np.any(images != np.round(images)):
        raise RealCorpusError(f"scikit-learn's load_digits returned images {images.shape} with values "
                              f"[{images.min()}, {images.max()}]; expected 8x8 integer grey levels 0..16")
    images = images.astype(np.uint8)
    labels = np.asarray(data.target, dtype=np.int64)
    ink, shear = ink_and_slant(images)
    return Scans(images, labels, _terciles(ink, labels, "thin", "thick"), _terciles(-shear, labels, "left", "right"))


def image_tokens(image: np.ndarray, base: int) -> np.ndarray:
    """64 tokens: base + grey level, row-major."""
    return base + image.reshape(-1).astype(np.int64)


def _article(word: str) -> str:
    return "an" if word[0] in "aeio" and word != "one" else "a"


def _qualified(name: str, weight: Optional[str], slant: Optional[str], pick: int) -> str:
    an = _article(name).capitalize()
    lean = f"slanted to the {slant}" if slant else ""
    if weight and lean:
        return (f"A {weight} {name}, {lean}.", f"{an} {name} with {weight} strokes, {lean}.")[pick % 2]
    if weight:
        return (f"A {weight} {name}.", f"{an} {name} written with {weight} strokes.")[pick % 2]
    return (f"{an} {name} {lean}.", f"{an} {name}, {lean}.")[pick % 2]


def caption(rng: np.random.Generator, label: int, weight: Optional[str], slant: Optional[str]) -> str:
    kind = CAPTION_KINDS[int(rng.choice(3, p=CAPTION_P))]
    pick = int(rng.integers(0, 12))
    name = NAMES[label]
    if kind == "qualified" and (weight or slant):
        return _qualified(name, weight, slant, pick)
    if kind == "generic":
        return _GENERIC[pick % len(_GENERIC)]
    return _NAMED[pick % len(_NAMED)].format(n=name, N=name.capitalize())


def all_captions() -> List[str]:
    """Every caption the generator can write, sorted (part of the tokenizer's training text)."""
    out = set(_GENERIC)
    for name in NAMES:
        out.update(t.format(n=name, N=name.capitalize()) for t in _NAMED)
        for w in ("thick", "thin", None):
            for s in ("left", "right", None):
                if w or s:
                    out.update(_qualified(name, w, s, p) for p in (0, 1))
    return sorted(out)
