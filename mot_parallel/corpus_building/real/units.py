"""Discrete speech units: k-means over standardised log-mel frames, then runs of one unit collapsed.

A small numpy k-means (k-means++ seeding from a seeded generator, Lloyd iterations in float64, empty
clusters re-seeded at the worst-fit frame) rather than scikit-learn's: its result depends only on the
data and the seed, not on the thread count of an OpenMP runtime, which a byte-identical corpus needs.

Runs of identical units are collapsed (GSLM's "deduplicated" units, as most unit language models use):
at 50 frames/s a steady vowel repeats one unit for many frames, and an un-collapsed stream is mostly
"copy the previous unit", a pattern any model learns at once and that would swamp the speech loss;
collapsing keeps each token informative and halves sequence lengths, which a CPU budget needs. The cost
is duration, which here is the synthesiser's speed setting anyway.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence

import numpy as np


class Codebook(NamedTuple):
    mean: np.ndarray     # [d] feature mean of the calibration frames
    std: np.ndarray      # [d]
    centers: np.ndarray  # [k, d] in standardised space

    def to_array(self) -> np.ndarray:
        """[2 + k, d]: row 0 the mean, row 1 the std, then the centres (the file layout)."""
        return np.vstack([self.mean, self.std, self.centers])

    @classmethod
    def from_array(cls, a: np.ndarray) -> "Codebook":
        return cls(a[0], a[1], a[2:])


def _sq_dist(x: np.ndarray, c: np.ndarray, x_sq=None) -> np.ndarray:
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    return x_sq[:, None] - 2.0 * (x @ np.ascontiguousarray(c.T)) + (c * c).sum(1)[None, :]


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 40) -> np.ndarray:
    """Centres [k, d] of x [n, d] (n >= k)."""
    rng = np.random.default_rng([seed, 7])
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[int(rng.integers(0, len(x)))]
    x_sq = (x * x).sum(1)
    d2 = _sq_dist(x, centers[:1], x_sq)[:, 0]
    for j in range(1, k):  # k-means++: next centre drawn proportionally to squared distance
        p = np.maximum(d2, 0.0)
        centers[j] = x[int(rng.choice(len(x), p=p / p.sum()))] if p.sum() > 0 else x[int(rng.integers(0, len(x)))]
        d2 = np.minimum(d2, _sq_dist(x, centers[j:j + 1], x_sq)[:, 0])
    for _ in range(iters):
        dist = _sq_dist(x, centers, x_sq)
        assign = dist.argmin(1)
        counts = np.bincount(assign, minlength=k)
        new = np.stack([np.bincount(assign, weights=x[:, j], minlength=k) for j in range(x.shape[1])], 1)
        empty = counts == 0
        new[~empty] /= counts[~empty, None]
        worst = np.argsort(-dist[np.arange(len(x)), assign], kind="stable")
        new[empty] = x[worst[:int(empty.sum())]]
        if np.array_equal(new, centers):
            break
        centers = new
    return centers


def fit_codebook(frames: Sequence[np.ndarray], k: int, seed: int) -> Codebook:
    x = np.concatenate(list(frames))
    if len(x) < k:
        raise ValueError(f"{len(x)} calibration frames for {k} speech units; use more calibration utterances")
    mean, std = x.mean(0), x.std(0) + 1e-6
    return Codebook(mean, std, kmeans((x - mean) / std, k, seed))


def quantise(frames: np.ndarray, book: Codebook) -> np.ndarray:
    """Nearest unit per frame (int64)."""
    return _sq_dist((frames - book.mean) / book.std, book.centers).argmin(1)


def collapse_runs(units: np.ndarray) -> np.ndarray:
    """[3, 3, 5, 5, 5, 3] -> [3, 5, 3]."""
    if len(units) == 0:
        return units
    return units[np.r_[True, units[1:] != units[:-1]]]


def units_of(all_frames: Sequence[np.ndarray], book: Codebook) -> List[np.ndarray]:
    return [collapse_runs(quantise(f, book)) for f in all_frames]
