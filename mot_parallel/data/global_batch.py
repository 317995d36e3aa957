"""One planned global batch: which piece goes into which sequence of which (rank, micro-batch) cell.

Held as arrays sorted by (cell, sequence, position): a rank reads its own cells (`cell(k)`, O(its pieces));
the whole batch's per-cell vectors and training-target counts (the loss normaliser every rank needs) are
numpy passes over the pieces' modality runs, not Python loops over tens of thousands of pieces.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from .corpus import SegmentTable
from .pieces import Piece, Pieces, Runs


class GlobalBatch:
    def __init__(self, pieces: Pieces, cell: np.ndarray, seq: np.ndarray, n_cells: int, seqs_per_cell: int,
                 seq_len: int):
        self.pieces, self.cell_ids, self.seq_ids = pieces, cell, seq  # sorted by (cell, sequence, position)
        self.n_cells, self.seqs_per_cell, self.seq_len = n_cells, seqs_per_cell, seq_len
        self._bounds = np.searchsorted(cell, np.arange(n_cells + 1))
        self._cells: Optional[List[List[List[Piece]]]] = None
        self._runs: Optional[tuple] = None

    @classmethod
    def from_cells(cls, cells: List[List[List[Piece]]], seq_len: int) -> "GlobalBatch":
        """From nested lists [cell][sequence] -> pieces, in order."""
        flat = [(c, b, p) for c, cell in enumerate(cells) for b, seq in enumerate(cell) for p in seq]
        pieces = Pieces.of([(p, 0) for _, _, p in flat])
        return cls(pieces, np.array([c for c, _, _ in flat], np.int64), np.array([b for _, b, _ in flat], np.int64),
                   len(cells), len(cells[0]) if cells else 0, seq_len)

    def cell(self, k: int) -> List[List[Piece]]:
        """Cell k's sequences, each a list of pieces in order."""
        lo, hi = int(self._bounds[k]), int(self._bounds[k + 1])
        out: List[List[Piece]] = [[] for _ in range(self.seqs_per_cell)]
        for b, p in zip(self.seq_ids[lo:hi].tolist(), self.pieces.take(slice(lo, hi)).pieces()):
            out[b].append(p)
        return out

    @property
    def cells(self) -> List[List[List[Piece]]]:
        """[cell][sequence] -> pieces, in order (all cells: for reports and tests; a rank reads `cell(k)`)."""
        if self._cells is None:
            self._cells = [self.cell(k) for k in range(self.n_cells)]
        return self._cells

    def runs(self, corpus: SegmentTable) -> Runs:
        if self._runs is None or self._runs[0] is not corpus:
            self._runs = (corpus, Runs.of(corpus, self.pieces.doc, self.pieces.start, self.pieces.end))
        return self._runs[1]

    def piece_vectors(self, corpus: SegmentTable) -> np.ndarray:
        """[N, M] input tokens per modality of each piece."""
        return self.runs(corpus).vectors(len(self.pieces), len(corpus.modalities))

    def cell_vectors(self, corpus: SegmentTable) -> np.ndarray:
        """[K, M] input tokens per modality per cell."""
        out = np.zeros((self.n_cells, len(corpus.modalities)), np.int64)
        np.add.at(out, self.cell_ids, self.piece_vectors(corpus))
        return out

    def label_vector(self, corpus: SegmentTable) -> np.ndarray:
        """[M] training targets per modality in the whole batch, the loss normaliser (data/targets.py:
        next-token targets, a piece's last token has none; with continuous modalities also one diffusion
        target per patch)."""
        continuous = getattr(corpus, "continuous", np.zeros(len(corpus.modalities), bool))
        return self.runs(corpus).targets(len(self.pieces), continuous).sum(axis=0)

    def padding(self) -> int:
        return self.n_cells * self.seqs_per_cell * self.seq_len - int(self.pieces.length.sum())
