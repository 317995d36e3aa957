"""The global batch being filled: K cells x B sequences x S tokens, with per-cell modality loads.

A cell is one (DP rank, micro-batch); its per-modality token counts set the shapes of its grouped
GEMMs, so the packer balances `load` [K, M] across cells. Atomic items go whole into one sequence
(best fit); a splittable head may run over several sequences of its cell, cut at token boundaries.
"""
from __future__ import annotations

from typing import List

import numpy as np

from .pool import PoolItem
from .stream import Piece


class CellGrid:
    def __init__(self, n_modalities: int, n_cells: int, seqs_per_cell: int, seq_len: int):
        self.n_cells, self.seqs_per_cell, self.seq_len = n_cells, seqs_per_cell, seq_len
        self.seqs: List[List[List[Piece]]] = [[[] for _ in range(seqs_per_cell)] for _ in range(n_cells)]
        self.free = np.full((n_cells, seqs_per_cell), seq_len, dtype=np.int64)
        self.load = np.zeros((n_cells, n_modalities), dtype=np.int64)
        self.attn = np.zeros(n_cells, dtype=np.float64)  # sum of squared piece lengths (masked attention)

    @property
    def capacity(self) -> int:
        return self.free.size * self.seq_len

    def room(self) -> np.ndarray:
        """[K] free tokens per cell."""
        return self.free.sum(axis=1)

    def fits(self, n: int) -> np.ndarray:
        """[K] whether some sequence of the cell holds n more tokens."""
        return (self.free >= n).any(axis=1)

    def best_fit(self, c: int, n: int) -> int:
        """The sequence of cell c with the least free space that still holds n tokens (-1 if none)."""
        ok = np.flatnonzero(self.free[c] >= n)
        return int(ok[np.argmin(self.free[c, ok])]) if len(ok) else -1

    def place(self, c: int, b: int, piece: Piece, vector: np.ndarray) -> None:
        self.seqs[c][b].append(piece)
        self.free[c, b] -= piece.length
        self.load[c] += vector
        self.attn[c] += float(piece.length) ** 2

    def place_head(self, c: int, item: PoolItem, n: int) -> None:
        """Put the first n tokens of a splittable item into cell c (n <= room), whole in one sequence
        where one holds it, else cut over the sequences with the most free space."""
        while n:
            b = self.best_fit(c, n)
            if b < 0:
                b = int(np.argmax(self.free[c]))
            k = min(n, int(self.free[c, b]))
            head, vec = item.cut_head(k)
            self.place(c, b, head, vec)
            n -= k
