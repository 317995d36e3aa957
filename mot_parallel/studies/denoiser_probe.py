"""What a picture model knows at each noise level, read without sampling: its clean-picture estimates of noised
ground truths, under the right caption and under captions with one word changed.

    rows = probe_denoiser(estimate, captions, truths, alpha_bar, fractions=(0.8, 0.65, 0.5, 0.35, 0.2))

Each ground truth x_0 (patches in [-1, 1]) is noised to t = fraction x T, with the same noise for every
caption variant, and the model's estimate x0_hat of it is compared with x_0 (mean squared error per value):
  right    the picture's own caption;
  shape    the caption with its shape word changed to another shape (the same picture);
  colour   ... with its colour word changed;
  none     no caption (BOI only: what condition dropout trained, the unconditioned branch of guidance).
shape - right is how much the caption's shape word helps the model recover the picture at that noise: a model
that draws the caption's shape must know it where the shape is still hidden in the noise, so the gap matters at
high and middle noise; colour - right is the same for the colour word, for scale. Sampling decides a picture's
layout from exactly these estimates (DDIM's x0_hat), so the probe shows what the samples can draw, per noise
level, in seconds. `estimate(contexts, x_t, t)` is the model: token contexts (caption ids + BOI), noised
patches [n, P, D], an integer t -> x0_hat [n, P, D] (tools/sample.py --probe binds a checkpoint).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..corpus_building.demo_corpus import _COLORS, _SHAPES
from ..corpus_building.demo_pictures import caption_ids

VARIANTS = ("right", "shape", "colour", "none")
_SHAPE, _COLOUR = 3, 2   # positions of shape and colour in a caption's attributes (count, size, colour, shape, place)

Estimator = Callable[[List[List[int]], torch.Tensor, int], torch.Tensor]


def changed(attrs: Sequence[int], field: int, options: int, rng: np.random.Generator) -> Tuple[int, ...]:
    """`attrs` with attribute `field` replaced by a different one of its `options` values, drawn from rng."""
    out = list(attrs)
    out[field] = (out[field] + 1 + int(rng.integers(options - 1))) % options
    return tuple(out)


def variant_contexts(attrs: Sequence[Sequence[int]], boi: int, seed: int) -> Dict[str, List[List[int]]]:
    """Token contexts per variant: each caption + BOI, changed as VARIANTS says (none: BOI alone)."""
    rng = np.random.default_rng([seed, 23])
    shapes = [changed(a, _SHAPE, len(_SHAPES), rng) for a in attrs]
    colours = [changed(a, _COLOUR, len(_COLORS), rng) for a in attrs]
    return {"right": [caption_ids(a) + [boi] for a in attrs], "shape": [caption_ids(a) + [boi] for a in shapes],
            "colour": [caption_ids(a) + [boi] for a in colours], "none": [[boi] for _ in attrs]}


def probe_denoiser(estimate: Estimator, attrs: Sequence[Sequence[int]], truths: torch.Tensor, boi: int,
                   alpha_bar: np.ndarray, fractions: Sequence[float] = (0.8, 0.65, 0.5, 0.35, 0.2),
                   seed: int = 0) -> List[Dict[str, float]]:
    """Per noise level (a fraction of T): {"t", "mse/<variant>" for VARIANTS, "gap/shape", "gap/colour"}, for
    ground-truth patches `truths` [n, P, D] of the pictures of caption attributes `attrs`."""
    if len(attrs) != len(truths) or not len(attrs):
        raise ValueError(f"probe_denoiser needs one picture per caption, n >= 1 (got {len(attrs)} and {len(truths)})")
    contexts = variant_contexts(attrs, boi, seed)
    T, rows = len(alpha_bar), []
    for f in fractions:
        t = min(int(round(f * T)), T - 1)
        a = float(alpha_bar[t])
        eps = torch.randn(truths.shape, generator=torch.Generator().manual_seed(seed * 100003 + t))
        x_t = math.sqrt(a) * truths + math.sqrt(1 - a) * eps
        row = {"t": t}
        for v in VARIANTS:
            row[f"mse/{v}"] = float(((estimate(contexts[v], x_t, t).float() - truths) ** 2).mean())
        row["gap/shape"] = row["mse/shape"] - row["mse/right"]
        row["gap/colour"] = row["mse/colour"] - row["mse/right"]
        rows.append(row)
    return rows
