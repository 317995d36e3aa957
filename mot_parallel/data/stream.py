"""The document stream feeding the packer: a seeded order per epoch, documents longer than a
sequence cut into pieces, and a FIFO carry-over of pieces the packer handed back (served first).

Every document of epoch e is served exactly once, as one or more pieces, before it could be served for
epoch e + 1; deferral only delays a piece, never drops or repeats it. The whole state is a few ints
and the carry-over list, so it goes into checkpoints as JSON.

Pieces are served one at a time (`take`) or in bulk: `peek(n)` shows the next n pieces as arrays without
serving them and `consume(k)` serves the first k of them, so the balanced packer draws a global batch
of tens of thousands of pieces in a few numpy passes. Both ways serve the same sequence. The carry-over
is kept as arrays too (`pieces.Pieces`). The packer sees a stream only through `PieceSource`, so a blend of
several corpora can feed it as one stream.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Protocol, Tuple

import numpy as np

from .corpus import SegmentTable
from .doc_cuts import cut_many, cut_points
from .pieces import Held, Piece, Pieces

__all__ = ["DocumentStream", "Held", "Piece", "PieceSource", "cut_points"]


class PieceSource(Protocol):
    """What the packers use of a stream."""
    corpus: SegmentTable

    def take(self) -> Held: ...
    def peek(self, n: int) -> Pieces: ...
    def consume(self, k: int) -> None: ...
    def defer(self, items: Iterable[Held]) -> None: ...
    def put_back(self, items: Iterable[Held]) -> None: ...
    def hand_back(self, pieces: Pieces) -> None: ...
    @property
    def carry_tokens(self) -> int: ...


class _Ahead:
    """Fresh pieces after the carry-over (the current document's pending pieces first), whole documents
    only, with the stream position after each: serving the first k sets (epoch, pos) from piece k - 1 and
    makes the rest of its document pending."""

    def __init__(self, pieces: Pieces, epoch: np.ndarray, pos: np.ndarray, rest: np.ndarray):
        self.pieces, self.epoch, self.pos, self.rest = pieces, epoch, pos, rest


class DocumentStream:
    """`order(epoch)`: the documents of one epoch, in order (default: a seeded permutation of all of them;
    a blend passes its BlendOrder, whose "epochs" are chunks of the blended sequence)."""

    def __init__(self, corpus: SegmentTable, seq_len: int, seed: int,
                 order: Optional[Callable[[int], np.ndarray]] = None):
        self.corpus, self.seq_len, self.seed, self._order = corpus, seq_len, seed, order
        self.epoch, self.pos = 0, 0
        self.pending: List[Piece] = []             # later pieces of the current long document
        self._carry, self._head = Pieces.empty(), 0  # pieces handed back by the packer, FIFO from _head
        self._orders: Dict[int, np.ndarray] = {}   # epochs >= self.epoch asked for (a blend's order is costly
        self._ahead: Optional[_Ahead] = None       # to ask for again once a later chunk was asked for)
        if corpus.num_docs == 0 or int(corpus.doc_len.sum()) == 0:
            raise ValueError(f"{corpus.prefix}: the corpus has no tokens")

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= self.epoch}
            self._orders[epoch] = self._order(epoch) if self._order is not None else \
                np.random.default_rng([self.seed, epoch]).permutation(self.corpus.num_docs)
        return self._orders[epoch]

    # ------------------------------------------------------------------------------------- serving
    def take(self) -> Held:
        """The next piece (the carry-over first) and how often it was deferred before."""
        self._ahead = None
        if self._head < len(self._carry):
            self._head += 1
            return self._carry.take(slice(self._head - 1, self._head)).held()[0]
        while not self.pending:
            order = self.order(self.epoch)
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
                continue
            doc = int(order[self.pos])
            self.pos += 1
            self.pending = self._cut(doc, self.epoch)
        return Held(self.pending.pop(0), 0)

    def _cut(self, doc: int, epoch: int) -> List[Piece]:
        n = int(self.corpus.doc_len[doc])  # an empty document in an external corpus: nothing to train on
        cuts = cut_points(self.corpus, doc, n, self.seq_len) if n > self.seq_len else [0, n] if n else [0]
        return [Piece(doc, a, b, epoch) for a, b in zip(cuts, cuts[1:])]

    def peek(self, n: int) -> Pieces:
        """The next n pieces (the carry-over first), as arrays, without serving them."""
        carry = self._carry.take(slice(self._head, self._head + n))
        if len(carry) < n and (self._ahead is None or len(self._ahead.pieces) < n - len(carry)):
            self._ahead = self._fresh(n - len(carry))
        if len(carry) == n:
            return carry
        return Pieces.concat([carry, self._ahead.pieces.take(slice(0, n - len(carry)))])

    def consume(self, k: int) -> None:
        """Serve the first k pieces that `peek` showed."""
        from_carry = min(k, len(self._carry) - self._head)
        self._head += from_carry
        k -= from_carry
        if self._head > 1024 and 2 * self._head > len(self._carry):
            self._carry, self._head = self._carry.take(slice(self._head, None)), 0
        if not k:
            return
        a = self._ahead
        self.epoch, self.pos = int(a.epoch[k - 1]), int(a.pos[k - 1])
        self.pending = a.pieces.take(slice(k, k + int(a.rest[k - 1]))).pieces()
        self._ahead = _Ahead(a.pieces.take(slice(k, None)), a.epoch[k:], a.pos[k:], a.rest[k:])

    def _fresh(self, n: int) -> _Ahead:
        """At least n fresh pieces, whole documents (the pending pieces first, then the lookahead so far),
        with the state after each."""
        if self._ahead is not None and len(self._ahead.pieces):
            a = self._ahead
            parts = [(a.pieces, a.epoch, a.pos, a.rest)]
            have, epoch, pos = len(a.pieces), int(a.epoch[-1]), int(a.pos[-1])
        else:
            k = len(self.pending)
            parts = [(Pieces.of([Held(p, 0) for p in self.pending]), np.full(k, self.epoch), np.full(k, self.pos),
                      np.arange(k)[::-1])]
            have, epoch, pos = k, self.epoch, self.pos
        while have < n:
            order = self.order(epoch)
            if pos >= len(order):
                epoch, pos = epoch + 1, 0
                continue
            docs = order[pos:pos + max(n - have, 64)].astype(np.int64)
            pieces, after, rest = self._pieces_of(docs, epoch)
            parts.append((pieces, np.full(len(pieces), epoch), pos + after, rest))
            have, pos = have + len(pieces), pos + len(docs)
        return _Ahead(Pieces.concat([p for p, _, _, _ in parts]),
                      *(np.concatenate([x[i] for x in parts]).astype(np.int64) for i in (1, 2, 3)))

    def _pieces_of(self, docs: np.ndarray, epoch: int) -> Tuple[Pieces, np.ndarray, np.ndarray]:
        """Pieces of documents served in order (epoch `epoch`), the position after each one's document
        (relative), and how many pieces of its document follow it."""
        count, start, end = cut_many(self.corpus, docs, self.corpus.doc_len[docs].astype(np.int64), self.seq_len)
        last = np.cumsum(count) - 1
        rest = np.repeat(last, count) - np.arange(len(start))
        zeros = np.zeros(len(start), np.int64)
        pieces = Pieces(np.repeat(docs, count), start, end, zeros + epoch, zeros)
        return pieces, np.repeat(np.arange(1, len(docs) + 1), count), rest

    def defer(self, items: Iterable[Held]) -> None:
        """Hand pieces back to the front of the carry-over, in the given order, counting a deferral."""
        self.put_back(Held(p, d + 1) for p, d in items)

    def put_back(self, items: Iterable[Held]) -> None:
        """Hand pieces back to the front of the carry-over unchanged (a cut tail, not a deferral)."""
        self.hand_back(Pieces.of([Held(*item) for item in items]))

    def hand_back(self, pieces: Pieces) -> None:
        """Put pieces (deferral counts as given) in front of the carry-over, in the given order."""
        self._carry, self._head = Pieces.concat([pieces, self._carry.take(slice(self._head, None))]), 0

    @property
    def carry(self) -> Tuple[Held, ...]:
        """The carry-over, front first (read-only: hand pieces back with defer / put_back)."""
        return tuple(self._carry.take(slice(self._head, None)).held())

    @property
    def carry_tokens(self) -> int:
        return int(self._carry.length[self._head:].sum())

    # ------------------------------------------------------------------------------------- checkpoints
    def snapshot(self) -> "StreamState":
        """The state now, cheap to take every step (arrays copied, JSON lists made only when asked)."""
        carry = self._carry.take(slice(self._head, None))
        # a blend: where it is, so a resume need not recount (blend.py)
        cursor = self._order.cursor(self.epoch) if hasattr(self._order, "cursor") else None
        return StreamState(self.epoch, self.pos, list(self.pending), Pieces(*(a.copy() for a in vars(carry).values())),
                           cursor)

    def state_dict(self) -> dict:
        return self.snapshot().to_dict()

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        if "order_cursor" in state and hasattr(self._order, "restore"):
            self._order.restore(state["order_cursor"])
        self.pending = [Piece(*p) for p in state["pending"]]
        self._carry, self._head = Pieces.of([Held(Piece(*p), int(d)) for p, d in state["carry"]]), 0
        self._ahead, self._orders = None, {}


class StreamState:
    def __init__(self, epoch: int, pos: int, pending: List[Piece], carry: Pieces, order_cursor=None):
        self.epoch, self.pos, self.pending, self.carry = epoch, pos, pending, carry
        self.order_cursor = order_cursor

    def to_dict(self) -> dict:
        state = {"epoch": self.epoch, "pos": self.pos, "pending": [list(p) for p in self.pending],
                 "carry": [[list(p), d] for p, d in self.carry.held()]}
        if self.order_cursor is not None:
            state["order_cursor"] = self.order_cursor
        return state
