"""Global-batch packing: which document pieces go into which sequence of which (rank, micro-batch) cell.

A global batch has K = DP x micro-batches cells, each holding B = micro_batch_size sequences of S
tokens. In MoT every modality has its own weights, so a cell's *per-modality* token counts set the
shapes of its grouped GEMMs; uneven mixes make ranks wait for each other and pipelines drain unevenly
(paper §6.1). `pack_balanced` gives every cell the same per-modality counts:

  1. pool      take pieces (carry-over first) until they exceed the batch capacity by `slack`;
  2. round     identical atomic pieces (e.g. images of 1024 tokens) are kept in a multiple of K so
               every cell gets the same number; the rest wait in the carry-over (FIFO, bounded);
               splittable pieces are pulled until they cover the capacity left;
  3. targets   per-cell quota per modality: atomic tokens / K plus the splittable share of the
               remaining capacity in the pool's proportions;
  4. LPT       unsplittable pieces, largest normalised size first, each to the cell whose worst
               modality load (load / quota) stays lowest, best-fit sequence within the cell;
  5. fill      splittable pieces (text, speech, ...) fill each cell's remaining per-modality deficit,
               cut at token boundaries (water-filling); leftovers return to the carry-over;
  6. top-up    any remaining free space is filled from the stream, so padding is ~0.

Deterministic (no randomness beyond the stream's seeded order) and computed from metadata only, so
every rank plans the same global batch and reads just its own cells. `pack_sequential` is the usual
baseline: concatenate in stream order and cut every S tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .corpus import SegmentTable
from .stream import DocumentStream, Piece


@dataclass
class GlobalBatch:
    cells: List[List[List[Piece]]]  # [cell][sequence] -> pieces, in order
    seq_len: int

    def cell_vectors(self, corpus: SegmentTable) -> np.ndarray:
        """[K, M] input tokens per modality per cell."""
        return np.stack([sum((corpus.vector(p.doc, p.start, p.end) for seq in cell for p in seq),
                             np.zeros(len(corpus.modalities), np.int64)) for cell in self.cells])

    def label_vector(self, corpus: SegmentTable) -> np.ndarray:
        """[M] loss tokens per target modality in the whole batch (a piece's last token has no target)."""
        out = np.zeros(len(corpus.modalities), np.int64)
        for cell in self.cells:
            for seq in cell:
                for p in seq:
                    out += corpus.vector(p.doc, p.start + 1, p.end)
        return out

    def padding(self) -> int:
        return sum(self.seq_len - sum(p.length for p in seq) for cell in self.cells for seq in cell)


def pack_sequential(stream: DocumentStream, n_cells: int, seqs_per_cell: int, seq_len: int) -> GlobalBatch:
    """Baseline (Megatron-style): concatenate pieces in stream order, cut every seq_len tokens."""
    cells = [[[] for _ in range(seqs_per_cell)] for _ in range(n_cells)]
    carry = None
    for c in range(n_cells):
        for b in range(seqs_per_cell):
            free = seq_len
            while free:
                piece, d = carry if carry else stream.take()
                carry = None
                if piece.length > free:
                    head = Piece(piece.doc, piece.start, piece.start + free, piece.epoch)
                    carry = (Piece(piece.doc, head.end, piece.end, piece.epoch), d)
                    piece = head
                cells[c][b].append(piece)
                free -= piece.length
    if carry:
        stream.carry.insert(0, carry)
    return GlobalBatch(cells, seq_len)


class _Cells:
    """Mutable per-cell state during balanced packing."""

    def __init__(self, corpus: SegmentTable, n_cells: int, seqs: int, seq_len: int):
        self.corpus = corpus
        self.seqs = [[[] for _ in range(seqs)] for _ in range(n_cells)]
        self.free = np.full((n_cells, seqs), seq_len, dtype=np.int64)
        self.load = np.zeros((n_cells, len(corpus.modalities)), dtype=np.float64)
        self.attn = np.zeros(n_cells, dtype=np.float64)

    def place(self, c: int, b: int, piece: Piece) -> None:
        self.seqs[c][b].append(piece)
        self.free[c, b] -= piece.length
        self.load[c] += self.corpus.vector(piece.doc, piece.start, piece.end)
        self.attn[c] += float(piece.length) ** 2

    def best_fit(self, c: int, n: int) -> int:
        """The sequence of cell c with the least free space that still holds n tokens (-1 if none)."""
        ok = np.flatnonzero(self.free[c] >= n)
        return int(ok[np.argmin(self.free[c, ok])]) if len(ok) else -1

    def put(self, c: int, piece: Piece) -> Tuple[Piece, ...]:
        """Place a splittable piece in cell c, splitting across its sequences; returns the unplaced tail."""
        while piece.length:
            b = self.best_fit(c, piece.length)
            if b < 0:
                b = int(np.argmax(self.free[c]))
                room = int(self.free[c, b])
                if room == 0:
                    return (piece,)
                head = Piece(piece.doc, piece.start, piece.start + room, piece.epoch)
                self.place(c, b, head)
                piece = Piece(piece.doc, head.end, piece.end, piece.epoch)
            else:
                self.place(c, b, piece)
                return ()
        return ()


def pack_balanced(stream: DocumentStream, n_cells: int, seqs_per_cell: int, seq_len: int,
                  slack: float = 0.03, max_deferrals: int = 1000) -> GlobalBatch:
    corpus = stream.corpus
    K, M = n_cells, len(corpus.modalities)
    capacity = K * seqs_per_cell * seq_len
    # 1. pool --------------------------------------------------------------------------------------------
    pool: List[Tuple[Piece, int, np.ndarray, bool]] = []  # (piece, times deferred, modality vector, splittable)

    def draw() -> Tuple[Piece, int, np.ndarray, bool]:
        piece, d = stream.take()
        pool.append((piece, d, corpus.vector(piece.doc, piece.start, piece.end),
                     not corpus.atomic_spans(piece.doc, piece.start, piece.end)))
        return pool[-1]
    total = 0
    while total < capacity * (1 + slack):
        total += draw()[0].length
    # 2. round identical atomic pieces to a multiple of K ---------------------------------------------------
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, (piece, d, vec, splittable) in enumerate(pool):
        if not splittable and np.count_nonzero(vec) == 1:
            groups.setdefault((int(np.argmax(vec)), piece.length), []).append(i)
    drop = set()
    for idx in groups.values():
        extra = len(idx) % K
        for i in reversed(idx):
            if extra == 0:
                break
            if pool[i][1] < max_deferrals:  # long-deferred pieces are pinned
                drop.add(i)
                extra -= 1
    unsplit = [i for i, it in enumerate(pool) if not it[3] and i not in drop]
    # unsplittable mass must leave room; defer the latest ones if not
    while sum(pool[i][0].length for i in unsplit) > capacity and unsplit:
        drop.add(unsplit.pop())
    # rounding freed room: pull splittable pieces until they cover it (unsplittable ones pulled now wait)
    room = capacity - sum(pool[i][0].length for i in unsplit)
    have = sum(it[0].length for it in pool if it[3])
    while have < room * (1 + slack):
        piece, _, _, splittable = draw()
        if splittable:
            have += piece.length
        else:
            drop.add(len(pool) - 1)
    split = [i for i, it in enumerate(pool) if it[3]]
    # 3. per-cell quotas ------------------------------------------------------------------------------------
    u_vec = sum((pool[i][2] for i in unsplit), np.zeros(M, np.int64)).astype(np.float64)
    s_vec = sum((pool[i][2] for i in split), np.zeros(M, np.int64)).astype(np.float64)
    budget = capacity - u_vec.sum()
    scale = min(1.0, budget / s_vec.sum()) if s_vec.sum() else 0.0
    quota = (u_vec + s_vec * scale) / K
    safe = np.where(quota > 0, quota, 1.0)
    cells = _Cells(corpus, K, seqs_per_cell, seq_len)
    # 4. LPT for unsplittable pieces ----------------------------------------------------------------------
    order = sorted(unsplit, key=lambda i: (-float(np.max(pool[i][2] / safe)), -pool[i][0].length, i))
    for i in order:
        piece, vec = pool[i][0], pool[i][2]
        fits = (cells.free >= piece.length).any(axis=1)
        if not fits.any():
            drop.add(i)
            continue
        worst = np.max((cells.load + vec) / safe, axis=1)
        attn = (cells.attn + piece.length ** 2) / max(cells.attn.mean() + piece.length ** 2, 1.0)
        score = np.where(fits, worst + 1e-3 * attn, np.inf)
        c = int(np.argmin(score))
        cells.place(c, cells.best_fit(c, piece.length), piece)
    # 5. water-fill splittable pieces -----------------------------------------------------------------------
    leftovers: List[Tuple[int, Tuple[Piece, int]]] = []
    for i in split:
        piece, d, vec, _ = pool[i]
        share = vec / max(piece.length, 1)
        while piece.length:
            deficit = np.clip(quota - cells.load, 0, None) @ share
            want = np.minimum(deficit, cells.free.sum(axis=1))
            c = int(np.argmax(want))
            n = int(min(piece.length, np.floor(want[c])))
            if n < 1:
                break
            head = Piece(piece.doc, piece.start, piece.start + n, piece.epoch)
            tail = cells.put(c, head)
            rest = Piece(piece.doc, head.end, piece.end, piece.epoch)
            piece = Piece(piece.doc, tail[0].start, piece.end, piece.epoch) if tail else rest
            if tail:
                break
        if piece.length:
            leftovers.append((i, (piece, d)))
    # 6. top up free space from the stream (only rounding remains, so this is small) ----------------------
    pulled: List[Tuple[Piece, int]] = []
    for _ in range(4 * K * seqs_per_cell):
        if not cells.free.any():
            break
        piece, d = stream.take()
        c, b = np.unravel_index(int(np.argmax(cells.free)), cells.free.shape)
        if corpus.atomic_spans(piece.doc, piece.start, piece.end):
            if cells.free[c, b] >= piece.length:
                cells.place(int(c), int(b), piece)
            else:
                pulled.append((piece, d))
            continue
        tail = cells.put(int(c), piece)
        if tail:
            pulled.append((tail[0], d))
    # deferred pieces go back in their original stream order, ahead of what was pulled after them
    back = sorted([(i, (pool[i][0], pool[i][1])) for i in drop] + leftovers, key=lambda t: t[0])
    stream.carry[:0] = [(p, d) for p, d in pulled]
    stream.defer([item for _, item in back])
    return GlobalBatch(cells.seqs, seq_len)


def batch_stats(batch: GlobalBatch, corpus: SegmentTable, gemm_overhead_tokens: float = 128.0,
                attention_weight: float = 0.0) -> Dict[str, object]:
    """Balance metrics of a global batch.

    max_over_mean[m]: max over cells of modality-m tokens / mean over cells;
    padding_fraction: padded positions / all positions;
    step_time_ratio: slowest cell / mean cell under a cost model: per modality, a grouped-GEMM slice costs
    its tokens plus `gemm_overhead_tokens` when non-empty (tile/launch overhead of a small GEMM), plus
    `attention_weight` x sum of squared piece lengths (document-masked attention).
    """
    vec = batch.cell_vectors(corpus).astype(np.float64)
    mean = vec.mean(axis=0)
    ratio = {name: (float(vec[:, m].max() / mean[m]) if mean[m] > 0 else 1.0)
             for m, name in enumerate(corpus.modalities)}
    attn = np.array([sum(float(p.length) ** 2 for seq in cell for p in seq) for cell in batch.cells])
    cost = (vec + gemm_overhead_tokens * (vec > 0)).sum(axis=1) + attention_weight * attn
    total = len(batch.cells) * len(batch.cells[0]) * batch.seq_len
    return {"max_over_mean": ratio, "padding_fraction": batch.padding() / total,
            "step_time_ratio": float(cost.max() / cost.mean())}
