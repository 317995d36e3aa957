"""The Transfusion demo corpus: small RGB pictures rendered from the demo world's captions.

The demo world (demo_corpus.py) says what a picture shows: a count, size, colour, shape and position
("the picture shows two large red stars at the top ."). Here that caption is drawn: `count` shapes of the
colour, of the size, in the named half of a 24 x 24 grey canvas (small seeded jitter), as pixels in
[-1, 1], cut into 4 x 4 patches (36 patch vectors of 48 values: the continuous modality `image`).
Documents: caption -> image (BOI/EOI markers around the patches), image -> caption, and prose. The
colour and the occupied half are what `score_picture` checks in a sample, so generation quality is
measurable without a classifier. Deterministic in (documents, seed); a few seconds for 4000 documents.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import numpy as np

from ..data.continuous_store import ContinuousWriter
from ..data.images import patchify, unpatchify
from ..data.indexed import token_dtype
from ..outputs import CORPUS_PICTURES
from .demo_corpus import _COLORS, _COUNTS, _PLACES, _SHAPES, _SIZES, TEXT, W, _caption, _markov, _prose

MODALITIES = ("text", "image")
BOI, EOI = TEXT[1], TEXT[1] + 1           # text-side markers around an image
VOCAB_SIZE = TEXT[1] + 2
SIDE, PATCH = 24, 4
GRID = SIDE // PATCH                        # 6 x 6 patches
PATCH_DIM = 3 * PATCH * PATCH
BACKGROUND = np.array([0.5, 0.5, 0.5])
PALETTE = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.3, 0.9], [0.95, 0.9, 0.1], [0.6, 0.1, 0.7],
                    [1.0, 0.55, 0.0], [0.05, 0.05, 0.05], [0.98, 0.98, 0.98]])   # in _COLORS order
CONTINUOUS = {"image": {"source": "pixels", "channels": 3, "patch": PATCH, "grid": [GRID, GRID],
                        "boi_token": BOI, "eoi_token": EOI, "patch_dim": PATCH_DIM}}


def _shape_mask(shape: int, size: int) -> np.ndarray:
    """A size x size boolean stamp of one of the eight shapes (crude at these sizes; colour matters most)."""
    y, x = np.mgrid[0:size, 0:size] + 0.5 - size / 2
    r = np.hypot(x, y)
    half = size / 2
    masks = [r <= half, np.ones((size, size), bool), (np.abs(x) <= (y + half) / 2 + 0.5),
             (np.abs(x) < 0.9) | (np.abs(y) < 0.9) | (np.abs(np.abs(x) - np.abs(y)) < 0.8),
             (r <= half) & (r >= half - 1.2), (np.abs(x) < 0.9) | (np.abs(y) < 0.9),
             (np.hypot(x + half / 2, y + half / 3) <= half / 2 + 0.3) | (np.hypot(x - half / 2, y + half / 3) <= half / 2 + 0.3)
             | ((y > -half / 4) & (np.abs(x) <= (half - y))), (r <= half) & (np.hypot(x - half / 2, y) > half * 0.8)]
    return masks[shape]


def render(attrs: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """RGB [SIDE, SIDE, 3] in [0, 1] of (count, size, colour, shape, place)."""
    count, size, color, shape, place = attrs
    img = np.tile(BACKGROUND, (SIDE, SIDE, 1))
    side = 4 + 2 * size                                         # 4, 6, 8 pixels
    rows = {"top": (0, SIDE // 2), "bottom": (SIDE // 2, SIDE)}.get(_PLACES[place], (0, SIDE))
    cols = {"left": (0, SIDE // 2), "right": (SIDE // 2, SIDE)}.get(_PLACES[place], (0, SIDE))
    stamp = _shape_mask(shape, side)
    for _ in range(count + 1):
        r = int(rng.integers(rows[0], max(rows[0] + 1, rows[1] - side + 1)))
        c = int(rng.integers(cols[0], max(cols[0] + 1, cols[1] - side + 1)))
        region = img[r:r + side, c:c + side]
        region[stamp[:region.shape[0], :region.shape[1]]] = PALETTE[color]
    return img


def to_patches(img: np.ndarray) -> np.ndarray:
    """RGB [SIDE, SIDE, 3] in [0, 1] -> [GRID * GRID, PATCH_DIM] in [-1, 1], raster order of patches
    (the corpus layout, images.patchify)."""
    return patchify((img * 2.0 - 1.0).transpose(2, 0, 1), PATCH).astype(np.float32)


def from_patches(patches: np.ndarray) -> np.ndarray:
    """Inverse of to_patches, clipped to [0, 1]."""
    x = unpatchify(np.asarray(patches, np.float32), 3, PATCH, (GRID, GRID)).transpose(1, 2, 0)
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def documents(n_docs: int, seed: int = 0) -> Iterator[List[Tuple[np.ndarray, int]]]:
    """[(tokens or patches, modality id)] segments per document; deterministic in (n_docs, seed)."""
    table = _markov(np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 2])
    for _ in range(n_docs):
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])
        cap, attrs = _caption(rng)
        if kind == 0:    # caption -> image
            yield [(np.array(cap + [BOI]), 0), (to_patches(render(attrs, rng)), 1), (np.array([EOI]), 0)]
        elif kind == 1:  # image -> caption
            yield [(np.array([BOI]), 0), (to_patches(render(attrs, rng)), 1), (np.array([EOI] + cap), 0)]
        else:            # prose
            yield [(np.array(_prose(rng, table, int(rng.integers(20, 60)))), 0)]


def write_demo_pictures(prefix: str, n_docs: int = 4000, seed: int = 0, overwrite: bool = False) -> str:
    info = {k: v for k, v in CONTINUOUS["image"].items() if k not in ("boi_token", "eoi_token")}
    w = ContinuousWriter(prefix, token_dtype(VOCAB_SIZE), {1: ("image", info)}, dtype="float32", overwrite=overwrite)
    try:
        for doc in documents(n_docs, seed):
            w.add_document(doc)
        w.close({"written_by": CORPUS_PICTURES, "modalities": list(MODALITIES), "vocab_size": VOCAB_SIZE,
                 "documents": n_docs,
                 "source": f"demo_pictures(seed={seed})"})
    except BaseException:
        w.abort()
        raise
    return prefix


def score_picture(rgb: np.ndarray, caption_attrs: Sequence[int]) -> Tuple[bool, bool]:
    """(colour right, half right) of a generated picture for its caption's attributes: the colour of the
    pixels that differ from the background, nearest in the palette; their centroid in the named half."""
    _, _, color, _, place = caption_attrs
    ink = np.abs(rgb - BACKGROUND).max(axis=-1) > 0.2
    if ink.sum() < 2:
        return False, False
    mean = rgb[ink].mean(axis=0)
    color_ok = int(np.argmin(((PALETTE - mean) ** 2).sum(axis=1))) == color
    ys, xs = np.nonzero(ink)
    half = SIDE / 2
    where = {"left": xs.mean() < half, "right": xs.mean() >= half, "top": ys.mean() < half,
             "bottom": ys.mean() >= half}[_PLACES[place]]
    return bool(color_ok), bool(where)


def caption_tokens(text: str) -> Tuple[List[int], Tuple[int, ...]]:
    """A demo-world caption's token ids and attributes ("the picture shows two large red stars at the top .")."""
    words = text.replace(".", " .").split()
    ids = [W[w] for w in words]
    pick = lambda options: next(i for i, o in enumerate(options) if o in words)  # noqa: E731
    plural = [w[:-1] if w.endswith("s") and w[:-1] in _SHAPES else w for w in words]
    attrs = (pick(_COUNTS), pick(_SIZES), pick(_COLORS), next(i for i, o in enumerate(_SHAPES) if o in plural),
             pick(_PLACES))
    return ids, attrs
