"""Does a sampled picture show what its caption says? Five checks against the demo world's own renderer.

    checks = score_picture(rgb, attrs)      # {"colour": bool, "half": bool, "shape": bool, "count": bool, "size": bool}
    table = score_pictures(pictures, attrs)  # accuracy, standard error, chance and a mismatched-caption baseline

Ink is every pixel that differs from the grey background by more than 0.2 in some channel. Its 8-connected
components are the drawn objects: one smaller than 6 pixels is a speck (ignored); one that fits a 11 x 11
box is matched against the world's 24 stamps (demo_shapes.py: 8 shapes x 3 sizes) by intersection over
union of the tight crops, centres aligned, shifts of up to a pixel allowed; it is a *shape* when the best
match reaches 0.5. Then
  colour  the palette colour nearest to most ink pixels is the caption's (chance 1/8);
  half    at least 75% of the ink lies in the named half (chance 1/2 for a picture whose ink sits in one half);
  shape   the shapes' most common best-matching stamp is the caption's shape (chance 1/8);
  size    ... and its size is the caption's (chance 1/3);
  count   the number of shapes is the caption's count (chance 1/4).
A canvas filled with the caption's colour scores on colour only: its one component is no shape, so shape,
size and count fail, and half of its ink lies in each half. Ground-truth renders score 1 on every check
(tests/studies/test_picture_score.py). Beside the uniform chance, `score_pictures` reports each check against
mismatched captions (every picture scored against the next picture's caption): what the scorer gives a
model that ignores the caption but draws like the world.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..corpus_building.demo_pictures import BACKGROUND, PALETTE, SIDE, region
from ..corpus_building.demo_shapes import SHAPES, SIZES, STAMPS

CHECKS = ("colour", "half", "shape", "count", "size")
CHANCE = {"colour": 1 / 8, "half": 1 / 2, "shape": 1 / len(SHAPES), "count": 1 / 4, "size": 1 / len(SIZES)}
INK = 0.2          # max channel distance from the background that makes a pixel ink
SPECK = 6          # components smaller than this are noise
MAX_SIDE = 11      # a component whose box exceeds this is no stamp (the largest is 9)
MIN_MATCH = 0.5    # best stamp overlap for a component to count as a shape
HALF_SHARE = 0.75  # share of the ink that must lie in the named half


def components(mask: np.ndarray) -> List[np.ndarray]:
    """Boolean masks of the 8-connected components of `mask` [H, W] (a scan with union-find)."""
    h, w = mask.shape
    label = -np.ones((h, w), np.int64)
    parent: List[int] = []

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a
    for r, c in zip(*np.nonzero(mask)):
        near = [label[rr, cc] for rr, cc in ((r - 1, c - 1), (r - 1, c), (r - 1, c + 1), (r, c - 1))
                if 0 <= rr and 0 <= cc < w and label[rr, cc] >= 0]
        if not near:
            parent.append(len(parent))
            label[r, c] = parent[-1]
            continue
        roots = sorted({find(int(n)) for n in near})
        for other in roots[1:]:
            parent[other] = roots[0]
        label[r, c] = roots[0]
    roots = np.array([find(i) for i in range(len(parent))], np.int64)
    if not len(roots):
        return []
    flat = np.where(label >= 0, roots[np.maximum(label, 0)], -1)
    return [flat == k for k in np.unique(roots)]


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


_CANVAS = MAX_SIDE + 4   # a crop centred here, shifted by up to a pixel, stays inside
_SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _place(mask: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    """`mask` centred on the matching canvas, shifted by (dy, dx)."""
    out = np.zeros((_CANVAS, _CANVAS), bool)
    oy, ox = (_CANVAS - mask.shape[0]) // 2 + dy, (_CANVAS - mask.shape[1]) // 2 + dx
    out[oy:oy + mask.shape[0], ox:ox + mask.shape[1]] = mask
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Best intersection over union of two crops, centres aligned, shifted by up to one pixel."""
    pa = _place(a)
    return max(float((pa & pb).sum() / (pa | pb).sum()) for pb in (_place(b, dy, dx) for dy, dx in _SHIFTS))


_KEYS = [(shape, SIZES.index(side)) for (shape, side) in STAMPS]
_STACK = np.stack([np.stack([_place(_crop(m), dy, dx) for dy, dx in _SHIFTS]) for m in STAMPS.values()])  # [24, 9, n, n]


def match_stamp(component: np.ndarray) -> Tuple[Optional[Tuple[int, int]], float]:
    """((shape, size class) of the best-matching stamp or None, its overlap) for one component mask."""
    crop = _crop(component)
    if max(crop.shape) > MAX_SIDE:
        return None, 0.0
    c = _place(crop)
    iou = ((_STACK & c).sum((2, 3)) / (_STACK | c).sum((2, 3))).max(1)
    best = int(iou.argmax())
    return (_KEYS[best] if iou[best] >= MIN_MATCH else None), float(iou[best])


def read_picture(rgb: np.ndarray) -> Dict:
    """What the picture shows: ink mask, majority colour, and the (shape, size) of each recognised shape."""
    ink = np.abs(rgb - BACKGROUND).max(axis=-1) > INK
    colour = None
    if ink.any():
        nearest = ((rgb[ink][:, None, :] - PALETTE[None]) ** 2).sum(-1).argmin(-1)
        colour = int(np.bincount(nearest, minlength=len(PALETTE)).argmax())
    shapes = []
    for comp in components(ink):
        if comp.sum() >= SPECK:
            found, _ = match_stamp(comp)
            if found is not None:
                shapes.append(found)
    return {"ink": ink, "colour": colour, "shapes": shapes}


def _majority(values: Sequence[int]) -> Optional[int]:
    return int(np.bincount(values).argmax()) if len(values) else None


def score_picture(rgb: np.ndarray, attrs: Sequence[int], seen: Optional[Dict] = None) -> Dict[str, bool]:
    """The five checks of a picture [SIDE, SIDE, 3] in [0, 1] against caption attributes (count, size,
    colour, shape, place); `seen`: read_picture(rgb) when already computed."""
    count, size, colour, shape, place = attrs
    seen = read_picture(rgb) if seen is None else seen
    ink, shapes = seen["ink"], seen["shapes"]
    (r0, r1), (c0, c1) = region(place)
    inside = ink[r0:r1, c0:c1].sum()
    return {"colour": seen["colour"] == colour,
            "half": bool(ink.any() and inside >= HALF_SHARE * ink.sum()),
            "shape": _majority([s for s, _ in shapes]) == shape,
            "count": len(shapes) == count + 1,
            "size": _majority([z for _, z in shapes]) == size}


def score_pictures(pictures: Sequence[np.ndarray], attrs: Sequence[Sequence[int]]) -> Dict[str, Dict[str, float]]:
    """Per check: accuracy, its standard error sqrt(p (1 - p) / n), uniform chance, and the accuracy of the
    same pictures scored against mismatched captions (picture i against caption i + 1)."""
    n = len(pictures)
    if n == 0 or n != len(attrs):
        raise ValueError(f"score_pictures needs as many captions as pictures (got {n} and {len(attrs)}), n >= 1")
    seen = [read_picture(p) for p in pictures]
    right = [score_picture(p, a, s) for p, a, s in zip(pictures, attrs, seen)]
    wrong = [score_picture(pictures[i], attrs[(i + 1) % n], seen[i]) for i in range(n)] if n > 1 else right
    out = {}
    for k in CHECKS:
        p = float(np.mean([r[k] for r in right]))
        out[k] = {"accuracy": p, "stderr": float(np.sqrt(p * (1 - p) / n)), "chance": CHANCE[k],
                  "mismatched": float(np.mean([r[k] for r in wrong]))}
    return out
