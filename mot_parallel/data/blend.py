"""Blending corpora with weights (Megatron's habit: `data.path: "0.3 /data/text 0.7 /data/captions"`).

A blend is one document stream: the packer sees one table (corpus_set.py) and one order of documents.
The order comes in chunks of `chunk` documents; chunk e draws each position's source from the blend
weights with a generator seeded by (seed, e), so the order is deterministic and needs no state beyond
the stream's own (epoch = chunk index, position), which makes resume exact. A source's k-th draw is
document k of that source's endless sequence of seeded permutations (its own epochs), so a small source
repeats sooner than a large one, as in Megatron's BlendedDataset. Weights are respected within sampling
error (binomial per chunk).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np


def parse_blend(value, key: str) -> List[Tuple[float, str]]:
    """`prefix`, `"w1 p1 w2 p2 ..."` or `[w1, p1, w2, p2, ...]` -> [(weight, prefix)], weights summing to 1.
    Raises ValueError naming `key`."""
    items = value.split() if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if items is None:
        raise ValueError(f"{key}: expected a corpus prefix or a blend 'weight prefix weight prefix ...', got {value!r}")
    if not items:
        raise ValueError(f"{key} is empty; give a corpus prefix (<prefix>.bin/.idx), a blend 'weight prefix "
                         "weight prefix ...', or null for the demo corpus")
    if len(items) == 1:
        return [(1.0, str(items[0]))]
    if len(items) % 2:
        raise ValueError(f"{key}: a blend alternates weights and prefixes (Megatron's 'w1 p1 w2 p2'); got "
                         f"{len(items)} items: {value!r}")
    pairs = []
    for w, p in zip(items[::2], items[1::2]):
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: {w!r} is not a weight (a blend alternates weights and prefixes)") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"{key}: weight {w!r} of {p!r} must be a positive finite number")
        pairs.append((weight, str(p)))
    total = sum(w for w, _ in pairs)
    return [(w / total, p) for w, p in pairs]


class BlendOrder:
    """The document order of a blend over a CorpusSet whose parts have `sizes` documents (global ids:
    part offset + local index)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, chunk: int = 4096):
        if any(n <= 0 for n in sizes):
            raise ValueError(f"every blended source needs documents, got sizes {list(sizes)}")
        self.sizes, self.seed, self.chunk = [int(n) for n in sizes], seed, chunk
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.offsets = np.cumsum([0] + self.sizes)
        self._before: List[np.ndarray] = [np.zeros(len(self.sizes), np.int64)]  # draws per source before chunk e
        self._cache: Dict[int, np.ndarray] = {}

    def _sources(self, e: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x6C656E64, e]).choice(len(self.sizes), size=self.chunk,
                                                                         p=self.weights)

    def _draws_before(self, e: int) -> np.ndarray:
        while len(self._before) <= e:
            k = len(self._before) - 1
            self._before.append(self._before[k] + np.bincount(self._sources(k), minlength=len(self.sizes)))
        return self._before[e]

    def _draws(self, s: int, start: int, count: int) -> np.ndarray:
        """Local documents of source s at its draws start .. start + count - 1."""
        n, out, k = self.sizes[s], [], start
        while k < start + count:
            epoch, pos = divmod(k, n)
            perm = np.random.default_rng([self.seed, s, epoch]).permutation(n)
            take = min(n - pos, start + count - k)
            out.append(perm[pos:pos + take])
            k += take
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def __call__(self, e: int) -> np.ndarray:
        if e not in self._cache:
            sources, before = self._sources(e), self._draws_before(e)
            order = np.empty(self.chunk, np.int64)
            for s in range(len(self.sizes)):
                where = np.flatnonzero(sources == s)
                order[where] = self.offsets[s] + self._draws(s, int(before[s]), len(where))
            self._cache = {e: order}
        return self._cache[e]
