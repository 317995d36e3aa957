"""The document stream feeding the packer: a seeded order per epoch, documents longer than a
sequence cut into pieces, and a FIFO carry-over of pieces the packer handed back (served first).

Every document of epoch e is served exactly once, as one or more pieces, before it could be served for
epoch e + 1; deferral only delays a piece, never drops or repeats it. The whole state is a few ints
and the carry-over list, so it goes into checkpoints as JSON.

The packer sees a stream only through `PieceSource` (take / defer / put_back / carry_tokens / corpus
and the state methods), so a blend of several corpora can feed it as one stream.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, Iterable, List, NamedTuple, Optional, Protocol, Tuple

import numpy as np

from .corpus import SegmentTable


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


class PieceSource(Protocol):
    """What the packers use of a stream."""
    corpus: SegmentTable

    def take(self) -> Held: ...
    def defer(self, items: Iterable[Held]) -> None: ...
    def put_back(self, items: Iterable[Held]) -> None: ...
    @property
    def carry_tokens(self) -> int: ...


def cut_points(corpus: SegmentTable, doc: int, length: int, seq_len: int) -> List[int]:
    """Piece boundaries for a document longer than `seq_len`: at most seq_len tokens per piece, and a
    cut never falls inside an atomic segment (an image) unless that segment alone exceeds seq_len."""
    spans = corpus.atomic_spans(doc, 0, length)
    cuts, pos = [0], 0
    while length - pos > seq_len:
        cut = pos + seq_len
        for a, b in spans:
            if a < cut < b and a > pos:
                cut = a  # move the cut to the start of the image
                break
        cuts.append(cut)
        pos = cut
    return cuts + [length]


class DocumentStream:
    """`order(epoch)`: the documents of one epoch, in order (default: a seeded permutation of all of them;
    a blend passes its BlendOrder, whose "epochs" are chunks of the blended sequence)."""

    def __init__(self, corpus: SegmentTable, seq_len: int, seed: int,
                 order: Optional[Callable[[int], np.ndarray]] = None):
        self.corpus, self.seq_len, self.seed, self._order = corpus, seq_len, seed, order
        self.epoch, self.pos = 0, 0
        self.pending: List[Piece] = []             # later pieces of the current long document
        self._carry: Deque[Held] = deque()         # pieces handed back by the packer, FIFO
        self._order_cache: Dict[int, np.ndarray] = {}
        if corpus.num_docs == 0 or int(corpus.doc_len.sum()) == 0:
            raise ValueError(f"{corpus.prefix}: the corpus has no tokens")

    def order(self, epoch: int) -> np.ndarray:
        if self._order is not None:
            return self._order(epoch)
        if epoch not in self._order_cache:
            self._order_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.corpus.num_docs)}
        return self._order_cache[epoch]

    # ------------------------------------------------------------------------------------- serving
    def take(self) -> Held:
        """The next piece (the carry-over first) and how often it was deferred before."""
        if self._carry:
            return self._carry.popleft()
        while not self.pending:
            order = self.order(self.epoch)
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
                continue
            doc = int(order[self.pos])
            self.pos += 1
            n = int(self.corpus.doc_len[doc])
            if n == 0:
                continue  # an empty document in an external corpus: nothing to train on
            cuts = cut_points(self.corpus, doc, n, self.seq_len) if n > self.seq_len else [0, n]
            self.pending = [Piece(doc, a, b, self.epoch) for a, b in zip(cuts, cuts[1:])]
        return Held(self.pending.pop(0), 0)

    def defer(self, items: Iterable[Held]) -> None:
        """Hand pieces back to the front of the carry-over, in the given order, counting a deferral."""
        self.put_back(Held(p, d + 1) for p, d in items)

    def put_back(self, items: Iterable[Held]) -> None:
        """Hand pieces back to the front of the carry-over unchanged (a cut tail, not a deferral)."""
        self._carry.extendleft(reversed([Held(*item) for item in items]))

    @property
    def carry(self) -> Tuple[Held, ...]:
        """The carry-over, front first (read-only: hand pieces back with defer / put_back)."""
        return tuple(self._carry)

    @property
    def carry_tokens(self) -> int:
        return sum(h.piece.length for h in self._carry)

    # ------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "pos": self.pos, "pending": [list(p) for p in self.pending],
                 "carry": [[list(p), d] for p, d in self._carry]}
        if hasattr(self._order, "cursor"):  # a blend: where it is, so a resume need not recount (blend.py)
            state["order_cursor"] = self._order.cursor(self.epoch)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        if "order_cursor" in state and hasattr(self._order, "restore"):
            self._order.restore(state["order_cursor"])
        self.pending = [Piece(*p) for p in state["pending"]]
        self._carry = deque(Held(Piece(*p), int(d)) for p, d in state["carry"])
