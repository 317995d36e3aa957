"""The Transfusion demo corpus: small RGB pictures rendered from the demo world's captions.

The demo world (demo_corpus.py) says what a picture shows: a count, size, colour, shape and position
("the picture shows two large red star at the top ."). Here that caption is drawn: `count` shapes
(demo_shapes.py: hand-drawn 5, 7 or 9-pixel stamps) of the colour, inside the named half of a 32 x 32 grey
canvas, at random places that never touch (at least one pixel apart, so each shape is one connected
component and the count can be read back), as pixels in [-1, 1], cut into p x p patches (p divides 32:
the continuous modality `image`, patch vectors of 3 p^2 values). Four large shapes do not fit a 16 x 32
half, so this world never shows them: its captions never say "four large". Documents: caption -> image
(BOI/EOI markers around the patches), image -> caption, and prose. Deterministic in (documents, seed, patch).

Held-out captions: a fixed tenth of the 2,816 attribute combinations (count x size x colour x shape x
position, less four-large) never occurs in a training document, so sampling from them (`held_out_captions`)
asks the model for pictures it has never been shown, built from words it has; picture_score.py checks
what it draws.
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from ..data.continuous_store import ContinuousWriter
from ..data.images import patchify, unpatchify
from ..data.indexed import token_dtype
from ..outputs import CORPUS_PICTURES
from .demo_corpus import _COLORS, _COUNTS, _PLACES, _SHAPES, _SIZES, TEXT, W, _caption, _markov, _prose
from .demo_shapes import SIZES, shape_mask

MODALITIES = ("text", "image")
BOI, EOI = TEXT[1], TEXT[1] + 1           # text-side markers around an image
VOCAB_SIZE = TEXT[1] + 2
SIDE = 32                                   # canvas side in pixels
PATCHES = (2, 4, 8, 16)                     # patch sides that tile the canvas
BACKGROUND = np.array([0.5, 0.5, 0.5])
PALETTE = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.3, 0.9], [0.95, 0.9, 0.1], [0.6, 0.1, 0.7],
                    [1.0, 0.55, 0.0], [0.05, 0.05, 0.05], [0.98, 0.98, 0.98]])   # in _COLORS order


def capacity(side: int) -> int:
    """How many side x side stamps, a pixel apart, fit a SIDE/2 x SIDE half (rows x columns of them)."""
    return ((SIDE // 2 + 1) // (side + 1)) * ((SIDE + 1) // (side + 1))


ALL_CAPTIONS = [a for a in itertools.product(*(range(len(o)) for o in (_COUNTS, _SIZES, _COLORS, _SHAPES, _PLACES)))
                if a[0] + 1 <= capacity(SIZES[a[1]])]   # the world's captions: four large shapes do not fit
HELD_OUT = frozenset(ALL_CAPTIONS[i] for i in
                     np.random.default_rng(20240817).permutation(len(ALL_CAPTIONS))[:len(ALL_CAPTIONS) // 10])
_SHOWN = frozenset(ALL_CAPTIONS) - HELD_OUT


def continuous_spec(patch: int) -> dict:
    """model.continuous.image for patch side `patch` (a PATCHES entry)."""
    grid = SIDE // patch
    return {"source": "pixels", "channels": 3, "patch": patch, "grid": [grid, grid], "boi_token": BOI,
            "eoi_token": EOI, "patch_dim": 3 * patch * patch}


def caption_ids(attrs: Sequence[int]) -> List[int]:
    """Token ids of the caption of (count, size, colour, shape, place) (demo_corpus._caption's words)."""
    c, s, col, sh, pl = attrs
    words = ["the", "picture", "shows", _COUNTS[c], _SIZES[s], _COLORS[col], _SHAPES[sh], "at", "the",
             _PLACES[pl], "."]
    return [W[w] for w in words]


def training_caption(rng) -> Tuple[List[int], Tuple[int, ...]]:
    """A demo caption of this world that is not held out (redrawn until one is)."""
    while True:
        ids, attrs = _caption(rng)
        if attrs in _SHOWN:
            return ids, attrs


def held_out_captions(n: int, seed: int = 0) -> List[Tuple[List[int], Tuple[int, ...]]]:
    """n captions drawn (with replacement once n exceeds the set) from the held-out combinations."""
    pool = sorted(HELD_OUT)
    rng = np.random.default_rng([seed, 11])
    picks = rng.permutation(len(pool))[:n] if n <= len(pool) else rng.integers(0, len(pool), n)
    return [(caption_ids(pool[i]), pool[i]) for i in picks]


def region(place: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """(rows, cols) of the named half: [lo, hi) pixel ranges."""
    half = SIDE // 2
    name = _PLACES[place]
    rows = {"top": (0, half), "bottom": (half, SIDE)}.get(name, (0, SIDE))
    cols = {"left": (0, half), "right": (half, SIDE)}.get(name, (0, SIDE))
    return rows, cols


def placements(n: int, side: int, place: int, rng: np.random.Generator) -> List[Tuple[int, int]]:
    """Top-left corners of n side x side stamps inside the named half, pairwise at least one pixel apart
    (random places, redrawn until they fit; n <= capacity(side))."""
    (r0, r1), (c0, c1) = region(place)
    for _ in range(1000):
        taken = np.zeros((SIDE + 2, SIDE + 2), bool)   # a one-pixel margin: stamps may not touch
        out = []
        for _ in range(n):
            for _ in range(50):
                r, c = int(rng.integers(r0, r1 - side + 1)), int(rng.integers(c0, c1 - side + 1))
                if not taken[r:r + side + 2, c:c + side + 2].any():
                    taken[r + 1:r + side + 1, c + 1:c + side + 1] = True
                    out.append((r, c))
                    break
            else:
                break
        if len(out) == n:
            return out
    raise RuntimeError(f"cannot place {n} stamps of {side} pixels in the {_PLACES[place]} half")


def render(attrs: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """RGB [SIDE, SIDE, 3] in [0, 1] of (count, size, colour, shape, place)."""
    count, size, color, shape, place = attrs
    img = np.tile(BACKGROUND, (SIDE, SIDE, 1))
    stamp = shape_mask(shape, size)
    side = stamp.shape[0]
    for r, c in placements(count + 1, side, place, rng):
        img[r:r + side, c:c + side][stamp] = PALETTE[color]
    return img


def to_patches(img: np.ndarray, patch: int) -> np.ndarray:
    """RGB [SIDE, SIDE, 3] in [0, 1] -> [(SIDE/p)^2, 3 p^2] in [-1, 1], raster order of patches
    (the corpus layout, images.patchify)."""
    return patchify((img * 2.0 - 1.0).transpose(2, 0, 1), patch).astype(np.float32)


def from_patches(patches: np.ndarray, patch: int, grid: Sequence[int] = ()) -> np.ndarray:
    """Inverse of to_patches, clipped to [0, 1]; `grid` (rows, columns of patches) for a canvas other than
    this world's SIDE x SIDE."""
    grid = tuple(grid) or (SIDE // patch, SIDE // patch)
    x = unpatchify(np.asarray(patches, np.float32), 3, patch, grid).transpose(1, 2, 0)
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def documents(n_docs: int, seed: int = 0, patch: int = 8) -> Iterator[List[Tuple[np.ndarray, int]]]:
    """[(tokens or patches, modality id)] segments per document; deterministic in (n_docs, seed, patch)."""
    table = _markov(np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 2])
    for _ in range(n_docs):
        kind = rng.choice(3, p=[0.6, 0.2, 0.2])
        cap, attrs = training_caption(rng)
        if kind == 0:    # caption -> image
            yield [(np.array(cap + [BOI]), 0), (to_patches(render(attrs, rng), patch), 1), (np.array([EOI]), 0)]
        elif kind == 1:  # image -> caption
            yield [(np.array([BOI]), 0), (to_patches(render(attrs, rng), patch), 1), (np.array([EOI] + cap), 0)]
        else:            # prose
            yield [(np.array(_prose(rng, table, int(rng.integers(20, 60)))), 0)]


def write_demo_pictures(prefix: str, n_docs: int = 4000, seed: int = 0, patch: int = 8,
                        overwrite: bool = False) -> str:
    info = {k: v for k, v in continuous_spec(patch).items() if k not in ("boi_token", "eoi_token")}
    w = ContinuousWriter(prefix, token_dtype(VOCAB_SIZE), {1: ("image", info)}, dtype="float32", overwrite=overwrite)
    try:
        for doc in documents(n_docs, seed, patch):
            w.add_document(doc)
        w.close({"written_by": CORPUS_PICTURES, "modalities": list(MODALITIES), "vocab_size": VOCAB_SIZE,
                 "documents": n_docs, "source": f"demo_pictures(seed={seed}, patch={patch})"})
    except BaseException:
        w.abort()
        raise
    return prefix
