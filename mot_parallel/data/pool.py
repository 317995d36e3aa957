"""The packer's pool: the pieces drawn from the stream for one global batch, as arrays.

Item i (stream order) has its modality runs and per-modality vector, whether it holds an atomic segment
(then it is placed whole or not at all), and how many of its tokens are placed (a splittable item is
placed head first: what is left is always a tail). Unplaced items and tails return to the carry-over in
stream order. The pool never holds more than `max_tokens` + `max_aside` (plus one piece): the packer's
memory is bounded whatever the corpus. Drawing is the same piece-by-piece rule as ever (draw while the
goal is unmet and the pool is not full), decided for a whole peeked chunk of the stream at once.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .pieces import Pieces, Runs
from .stream import PieceSource


def _before(values: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums."""
    return np.cumsum(values) - values


class Pool:
    def __init__(self, stream: PieceSource, max_tokens: int, oversized_above: Optional[int] = None,
                 max_aside: int = 0):
        self.stream, self.corpus, self.max_tokens = stream, stream.corpus, max_tokens
        self.oversized_above, self.max_aside = oversized_above, max_aside
        self.n_modalities = len(self.corpus.modalities)
        self.atomic_modality = np.asarray(self.corpus.atomic, dtype=bool)
        self.pieces = Pieces.empty()
        self.runs = Runs(*(np.zeros(0, np.int64) for _ in range(4)))
        self.vector = np.zeros((0, self.n_modalities), np.int64)
        self.atomic = np.zeros(0, bool)
        self.placed = np.zeros(0, bool)        # atomic items: placed whole
        self.done = np.zeros(0, np.int64)      # splittable items: tokens placed from the head
        self.tokens = 0  # drawn so far, the oversized atomic items set aside excepted
        self.aside = 0   # tokens of oversized atomic items set aside (at most max_aside, plus one piece)
        self._typical = max(1, int(self.corpus.doc_len.mean()))  # tokens per piece, to size the peeks

    @property
    def length(self) -> np.ndarray:
        return self.pieces.length

    def _draw(self, metric: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], goal: float,
              cap: int, expect: float) -> float:
        """Draw piece after piece while the metric drawn so far is under `goal` and the counted tokens
        under `cap`; the metric drawn. `expect`: about how many tokens that takes (to size the peeks)."""
        got, want = 0.0, int(1.1 * expect / self._typical) + 16
        while got < goal and self.tokens < cap:
            chunk = self.stream.peek(want)
            runs = Runs.of(self.corpus, chunk.doc, chunk.start, chunk.end)
            vec = runs.vectors(len(chunk), self.n_modalities)
            atomic = np.bincount(runs.piece[self.atomic_modality[runs.mode]], minlength=len(chunk)) > 0
            length = chunk.length
            aside = np.zeros(len(chunk), bool)
            if self.oversized_above is not None:  # an image as long as a sequence waits for a step of its own kind
                big = atomic & (vec[:, self.atomic_modality].sum(axis=1) > self.oversized_above)
                aside = big & (self.aside + _before(np.where(big, length, 0)) < self.max_aside)
            counted = np.where(aside, 0, length)
            value = metric(vec, atomic, length).astype(np.float64)
            ok = (got + _before(value) < goal) & (self.tokens + _before(counted) < cap)
            n = int(np.argmin(ok)) if not ok.all() else len(chunk)
            self.stream.consume(n)
            self._append(chunk.take(slice(0, n)), runs, vec[:n], atomic[:n])
            got += float(value[:n].sum())
            self.tokens += int(counted[:n].sum())
            self.aside += int(length[:n][aside[:n]].sum())
            if len(self.pieces) >= 64:
                self._typical = max(1, int(self.length.mean()))
            if n < len(chunk):
                break
            want *= 2
        return got

    def _append(self, chunk: Pieces, runs: Runs, vec: np.ndarray, atomic: np.ndarray) -> None:
        n, base = len(chunk), len(self.pieces)
        keep = runs.piece < n
        self.runs = Runs(*(np.concatenate([a, b[keep] + (base if f == "piece" else 0)])
                           for f, a, b in ((f, getattr(self.runs, f), getattr(runs, f))
                                           for f in ("piece", "mode", "length", "offset"))))
        self.pieces = Pieces.concat([self.pieces, chunk])
        self.vector = np.concatenate([self.vector, vec])
        self.atomic = np.concatenate([self.atomic, atomic])
        self.placed = np.concatenate([self.placed, np.zeros(n, bool)])
        self.done = np.concatenate([self.done, np.zeros(n, np.int64)])

    def fill_to(self, tokens: int) -> None:
        cap = min(tokens, self.max_tokens)
        self._draw(lambda vec, atomic, length: np.zeros(len(length)), 1.0, cap, cap - self.tokens)

    def draw_splittable(self, tokens: int) -> None:
        """Draw until the unplaced splittable tokens reach `tokens` (or the pool is full); atomic pieces
        drawn meanwhile wait in the pool and go back to the carry-over."""
        have = int(self.left()[~self.atomic].sum())
        self._draw(lambda vec, atomic, length: np.where(atomic, 0, length), tokens - have, self.max_tokens,
                   2 * (tokens - have))

    def draw_units(self, atomic_tokens: int, max_tokens: int) -> bool:
        """Draw until newly drawn atomic items hold `atomic_tokens` atomic-modality tokens (or the pool
        holds max_tokens); whether any atomic item came."""
        mask = self.atomic_modality
        got = self._draw(lambda vec, atomic, length: np.where(atomic, vec[:, mask].sum(axis=1), 0),
                         atomic_tokens, min(max_tokens, self.max_tokens), 3 * atomic_tokens)
        return got > 0

    def left(self) -> np.ndarray:
        """[N] tokens of each item not placed yet."""
        return np.where(self.placed, 0, self.length - self.done)

    def units(self) -> np.ndarray:
        """Unplaced atomic items, in stream order."""
        return np.flatnonzero(self.atomic & ~self.placed)

    def splittable(self) -> np.ndarray:
        """Splittable items with tokens left, in stream order."""
        return np.flatnonzero(~self.atomic & (self.done < self.length))

    def hand_back(self) -> int:
        """Return every unplaced item (or tail) to the stream's carry-over, in stream order, one deferral
        more; their count."""
        left = np.flatnonzero(self.left() > 0)
        back = self.pieces.take(left)
        back.start = back.start + self.done[left]
        back.deferrals = back.deferrals + 1
        self.stream.hand_back(back)
        return len(left)
