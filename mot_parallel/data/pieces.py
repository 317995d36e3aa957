"""Pieces as arrays: the packer plans a global batch of tens of thousands of pieces with numpy, not per piece.

`Pieces` holds (doc, start, end, epoch, deferrals) columns; `Runs` are their modality runs, flattened (the
piece each run belongs to, its modality, length and offset in the piece), read from the corpus's segment
table in one gather, so per-modality counts of any piece or head come without asking the corpus per piece.
At 512 DP ranks x 8 micro-batches x 4,096 tokens a global batch holds ~20k pieces: a Python loop over them
costs more than the planning budget (tens of ms), one numpy pass over them costs ~1 ms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Sequence

import numpy as np

from .corpus import SegmentTable

FIELDS = ("doc", "start", "end", "epoch", "deferrals")


class Piece(NamedTuple):
    doc: int
    start: int
    end: int
    epoch: int

    @property
    def length(self) -> int:
        return self.end - self.start


class Held(NamedTuple):
    """A piece as the stream hands it out, with how often the packer has deferred it so far."""
    piece: Piece
    deferrals: int


@dataclass
class Pieces:
    doc: np.ndarray
    start: np.ndarray
    end: np.ndarray
    epoch: np.ndarray
    deferrals: np.ndarray

    @classmethod
    def empty(cls) -> "Pieces":
        return cls(*(np.zeros(0, np.int64) for _ in FIELDS))

    @classmethod
    def of(cls, held: Sequence[Held]) -> "Pieces":
        if not held:
            return cls.empty()
        a = np.array([(*p, d) for p, d in held], np.int64).reshape(len(held), 5)
        return cls(*(np.ascontiguousarray(a[:, i]) for i in range(5)))

    @classmethod
    def concat(cls, parts: Sequence["Pieces"]) -> "Pieces":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))

    def __len__(self) -> int:
        return len(self.doc)

    @property
    def length(self) -> np.ndarray:
        return self.end - self.start

    def take(self, index) -> "Pieces":
        return Pieces(*(getattr(self, f)[index] for f in FIELDS))

    def held(self) -> List[Held]:
        cols = [getattr(self, f).tolist() for f in FIELDS]
        return [Held(Piece(d, a, b, e), k) for d, a, b, e, k in zip(*cols)]

    def pieces(self) -> List[Piece]:
        return [Piece(d, a, b, e) for d, a, b, e in zip(self.doc.tolist(), self.start.tolist(), self.end.tolist(),
                                                         self.epoch.tolist())]


def ragged_arange(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """first[0] .. first[0] + count[0] - 1, first[1] .., ... concatenated (numpy, no Python loop)."""
    total = int(count.sum())
    if not total:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(count) - count
    return np.repeat(first - offsets, count) + np.arange(total)


@dataclass
class Runs:
    """Modality runs of pieces, in piece order and document order within a piece."""
    piece: np.ndarray   # owning piece of each run
    mode: np.ndarray    # modality id
    length: np.ndarray
    offset: np.ndarray  # first token of the run, relative to the piece start

    @classmethod
    def of(cls, table: SegmentTable, doc: np.ndarray, start: np.ndarray, end: np.ndarray) -> "Runs":
        first = table.doc_seg[doc].astype(np.int64)
        count = table.doc_seg[doc + 1].astype(np.int64) - first
        seg = ragged_arange(first, count)
        owner = np.repeat(np.arange(len(doc)), count)
        seg_len = table.seg_len[seg].astype(np.int64)
        csum = np.cumsum(seg_len)
        seg_end = csum - np.repeat(np.r_[0, csum][np.cumsum(count) - count], count)  # within the document
        lo = np.maximum(start[owner], seg_end - seg_len)
        hi = np.minimum(end[owner], seg_end)
        keep = hi > lo
        return cls(owner[keep], table.seg_mode[seg][keep].astype(np.int64), (hi - lo)[keep],
                   (lo - start[owner])[keep])

    def vectors(self, n_pieces: int, n_modalities: int) -> np.ndarray:
        """[N, M] tokens per modality of each piece."""
        flat = np.bincount(self.piece * n_modalities + self.mode, weights=self.length,
                           minlength=n_pieces * n_modalities)
        return flat.astype(np.int64).reshape(n_pieces, n_modalities)

    def targets(self, n_pieces: int, continuous: np.ndarray) -> np.ndarray:
        """[N, M] training targets per modality of each piece (targets.py, per run): a continuous run's every
        patch; a discrete run's tokens but its first, which counts when the run before it in the piece is
        discrete too (it is then predicted across the run boundary)."""
        m = len(continuous)
        cont = continuous[self.mode]
        first = np.ones(len(self.piece), bool)
        first[1:] = self.piece[1:] != self.piece[:-1]
        prev_discrete = np.zeros(len(self.piece), bool)
        prev_discrete[1:] = ~cont[:-1]
        count = np.where(cont, self.length, self.length - 1 + (~first & prev_discrete))
        flat = np.bincount(self.piece * m + self.mode, weights=count, minlength=n_pieces * m)
        return flat.astype(np.int64).reshape(n_pieces, m)
