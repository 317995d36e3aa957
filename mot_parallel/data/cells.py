"""The global batch being filled: K cells x B sequences x S tokens, with per-cell modality loads.

A cell is one (DP rank, micro-batch); its per-modality token counts set the shapes of its grouped
GEMMs, so the packer balances `load` [K, M] across cells. Placements are recorded as arrays (which piece,
which cell and sequence), in placement order, which is a sequence's order of pieces.
"""
from __future__ import annotations

from typing import List

import numpy as np

from .global_batch import GlobalBatch
from .pieces import Pieces


class CellGrid:
    def __init__(self, n_modalities: int, n_cells: int, seqs_per_cell: int, seq_len: int):
        self.n_cells, self.seqs_per_cell, self.seq_len = n_cells, seqs_per_cell, seq_len
        self.free = np.full((n_cells, seqs_per_cell), seq_len, dtype=np.int64)
        self.load = np.zeros((n_cells, n_modalities), dtype=np.int64)
        self.attn = np.zeros(n_cells, dtype=np.float64)  # sum of squared piece lengths (masked attention)
        self._placed: List[tuple] = []

    @property
    def capacity(self) -> int:
        return self.free.size * self.seq_len

    def room(self) -> np.ndarray:
        """[K] free tokens per cell."""
        return self.free.sum(axis=1)

    def place(self, cells: np.ndarray, seqs: np.ndarray, pieces: Pieces, vectors: np.ndarray) -> None:
        """Append pieces to sequences (cells[i], seqs[i]); each sequence must hold its pieces."""
        length = pieces.length
        np.add.at(self.free, (cells, seqs), -length)
        np.add.at(self.load, cells, vectors)
        np.add.at(self.attn, cells, length.astype(np.float64) ** 2)
        assert (self.free >= 0).all(), "a sequence overflowed"
        self._placed.append((cells, seqs, pieces))

    def batch(self) -> GlobalBatch:
        if not self._placed:
            return GlobalBatch(Pieces.empty(), np.zeros(0, np.int64), np.zeros(0, np.int64), self.n_cells,
                               self.seqs_per_cell, self.seq_len)
        cells = np.concatenate([c for c, _, _ in self._placed])
        seqs = np.concatenate([s for _, s, _ in self._placed])
        pieces = Pieces.concat([p for _, _, p in self._placed])
        order = np.lexsort((np.arange(len(cells)), seqs, cells))
        return GlobalBatch(pieces.take(order), cells[order], seqs[order], self.n_cells, self.seqs_per_cell,
                           self.seq_len)
