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

import hashlib
from typing import Dict, List, Sequence, Tuple

import numpy as np


class BlendOrder:
    """The document order of a blend over a CorpusSet whose parts have `sizes` documents (global ids:
    part offset + local index).

    Its memory does not grow with the chunks served: it keeps one cursor (the draws per source before one
    chunk, advanced chunk by chunk; asking for an earlier chunk recounts from chunk 0) and each source's
    permutations of its current epochs (each drawn once, not once per chunk: a source's permutation costs
    O(its documents))."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, chunk: int = 4096):
        if any(n <= 0 for n in sizes):
            raise ValueError(f"every blended source needs documents, got sizes {list(sizes)}")
        self.sizes, self.seed, self.chunk = [int(n) for n in sizes], seed, chunk
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.offsets = np.cumsum([0] + self.sizes)
        self._cursor: Tuple[int, np.ndarray] = (0, np.zeros(len(self.sizes), np.int64))
        self._perms: List[Dict[int, np.ndarray]] = [{} for _ in self.sizes]  # source -> {epoch: permutation}
        self._cache: Dict[int, np.ndarray] = {}
        key = repr((self.sizes, self.weights.tolist(), seed, chunk)).encode()
        self.fingerprint = hashlib.sha256(key).hexdigest()[:16]  # which blend a stored cursor belongs to

    def cursor(self, e: int) -> dict:
        """The position before chunk e (draws per source), O(1) when e is the chunk last served."""
        return {"blend": self.fingerprint, "chunk": int(e), "draws": self._draws_before(e).tolist()}

    def restore(self, cursor: dict) -> bool:
        """Start from a stored cursor; False (and nothing changed) when it is not one of this blend's: the
        next chunk is then found by recounting, as for a checkpoint written before cursors were stored."""
        try:
            chunk, draws = int(cursor["chunk"]), np.asarray(cursor["draws"], dtype=np.int64)
            ok = cursor["blend"] == self.fingerprint and chunk >= 0 and draws.shape == (len(self.sizes),) \
                and draws.min(initial=0) >= 0 and int(draws.sum()) == chunk * self.chunk
        except (KeyError, TypeError, ValueError):
            return False
        if ok:
            self._cursor, self._cache = (chunk, draws), {}
        return ok

    def _sources(self, e: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0x6C656E64, e]).choice(len(self.sizes), size=self.chunk,
                                                                         p=self.weights)

    def _draws_before(self, e: int) -> np.ndarray:
        k, before = self._cursor
        if k > e:
            k, before = 0, np.zeros(len(self.sizes), np.int64)
        while k < e:
            k, before = k + 1, before + np.bincount(self._sources(k), minlength=len(self.sizes))
        self._cursor = (k, before)
        return before

    def _permutation(self, s: int, epoch: int) -> np.ndarray:
        perms = self._perms[s]
        if epoch not in perms:
            if len(perms) >= 2:  # draws only move forward: keep the newest epoch (a chunk may straddle two)
                perms.pop(min(perms))
            n = self.sizes[s]
            perms[epoch] = np.random.default_rng([self.seed, s, epoch]).permutation(n) if n > 1 else \
                np.zeros(1, np.int64)  # one document: every epoch is [0] (a tiny source wraps thousands)
        return perms[epoch]

    def _draws(self, s: int, start: int, count: int) -> np.ndarray:
        """Local documents of source s at its draws start .. start + count - 1."""
        n, out, k = self.sizes[s], [], start
        while k < start + count:
            epoch, pos = divmod(k, n)
            take = min(n - pos, start + count - k)
            out.append(self._permutation(s, epoch)[pos:pos + take])
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
