"""The packer's pool: the pieces drawn from the stream for one global batch, as named items.

Each item knows its modality runs (so any prefix's per-modality counts are known without asking the
corpus again), whether it holds an atomic segment (then it is placed whole or not at all), and its
position in the stream order, which is the order unplaced items go back to the carry-over. The pool
never holds more than `max_tokens` + `max_aside` (plus one piece): the packer's memory is bounded whatever
the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .corpus import SegmentTable
from .stream import Held, Piece, PieceSource

Runs = List[Tuple[int, int]]  # (modality id, tokens), in document order


def piece_runs(corpus: SegmentTable, piece: Piece) -> Runs:
    runs, pos = [], 0
    for n, m in zip(*corpus.segments(piece.doc)):
        lo, hi = max(piece.start, pos), min(piece.end, pos + int(n))
        if hi > lo:
            runs.append((int(m), hi - lo))
        pos += int(n)
        if pos >= piece.end:
            break
    return runs


def runs_vector(runs: Runs, n_modalities: int) -> np.ndarray:
    out = np.zeros(n_modalities, np.int64)
    for m, n in runs:
        out[m] += n
    return out


@dataclass
class PoolItem:
    index: int        # position in the stream order of this pool
    piece: Piece      # what is still unplaced (a splittable item shrinks as heads are cut off)
    deferrals: int    # how often the packer handed it back before
    runs: Runs
    vector: np.ndarray
    atomic: bool      # holds an atomic segment: placed whole or not at all
    placed: bool = False

    @property
    def length(self) -> int:
        return self.piece.length

    def cut_head(self, n: int) -> Tuple[Piece, np.ndarray]:
        """Split off the first n tokens (splittable items only); this item keeps the tail."""
        assert not self.atomic and 0 < n <= self.length
        p = self.piece
        head = Piece(p.doc, p.start, p.start + n, p.epoch)
        head_runs, tail_runs, left = [], [], n
        for m, k in self.runs:
            take = min(k, left)
            if take:
                head_runs.append((m, take))
            if k > take:
                tail_runs.append((m, k - take))
            left -= take
        head_vec = runs_vector(head_runs, len(self.vector))
        self.piece, self.runs = Piece(p.doc, p.start + n, p.end, p.epoch), tail_runs
        self.vector = self.vector - head_vec
        if not self.length:
            self.placed = True
        return head, head_vec


class Pool:
    def __init__(self, stream: PieceSource, max_tokens: int, oversized_above: Optional[int] = None,
                 max_aside: int = 0):
        self.stream, self.corpus, self.max_tokens = stream, stream.corpus, max_tokens
        self.oversized_above, self.max_aside = oversized_above, max_aside
        self.items: List[PoolItem] = []
        self.tokens = 0  # drawn so far, the oversized atomic items set aside excepted
        self.aside = 0   # tokens of oversized atomic items set aside (at most max_aside, plus one piece)
        self._atomic = np.asarray(self.corpus.atomic, dtype=bool)

    def draw(self) -> Optional[PoolItem]:
        """One more piece from the stream, or None once the pool holds max_tokens."""
        if self.tokens >= self.max_tokens:
            return None
        piece, deferrals = self.stream.take()
        runs = piece_runs(self.corpus, piece)
        atomic = bool(self.corpus.atomic_spans(piece.doc, piece.start, piece.end))
        item = PoolItem(len(self.items), piece, deferrals, runs, runs_vector(runs, len(self.corpus.modalities)),
                        atomic)
        self.items.append(item)
        # An oversized atomic item (more atomic tokens than any cell's quota may hold, e.g. an image as long
        # as a sequence) waits for a step of its own kind (atomic_units.candidate_quotas): the carry-over holds
        # up to a batch of them, and counting them here would let them crowd everything else out of the pool.
        # Bounded too: past max_aside they count like any piece.
        if atomic and self.oversized_above is not None and self.aside < self.max_aside \
                and int(item.vector[self._atomic].sum()) > self.oversized_above:
            self.aside += piece.length
        else:
            self.tokens += piece.length
        return item

    def fill_to(self, tokens: int) -> None:
        while self.tokens < tokens and self.draw() is not None:
            pass

    def draw_splittable(self, tokens: int) -> None:
        """Draw until the unplaced splittable pieces hold `tokens` (or the pool is full); atomic pieces
        drawn meanwhile wait in the pool and go back to the carry-over."""
        have = sum(it.length for it in self.splittable())
        while have < tokens:
            item = self.draw()
            if item is None:
                return
            if not item.atomic:
                have += item.length

    def draw_units(self, atomic_tokens: int, max_tokens: int) -> bool:
        """Draw until newly drawn atomic items hold `atomic_tokens` atomic-modality tokens (or the pool
        holds max_tokens); whether any atomic item came."""
        got = 0
        while got < atomic_tokens and self.tokens < max_tokens:
            item = self.draw()
            if item is None:
                break
            if item.atomic:
                got += int(item.vector[self._atomic].sum())
        return got > 0

    def units(self) -> List[PoolItem]:
        """Unplaced atomic items, in stream order."""
        return [it for it in self.items if it.atomic and not it.placed]

    def splittable(self) -> List[PoolItem]:
        """Unplaced splittable items (or their unplaced tails), in stream order."""
        return [it for it in self.items if not it.atomic and not it.placed]

    def hand_back(self) -> int:
        """Return every unplaced item (or tail) to the stream's carry-over, in stream order; its count."""
        left = [Held(it.piece, it.deferrals) for it in self.items if not it.placed and it.length]
        self.stream.defer(left)
        return len(left)
