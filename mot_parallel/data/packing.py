"""Global-batch packing: which document pieces go into which sequence of which (rank, micro-batch) cell.

A global batch has K = DP x micro-batches cells, each holding B = micro_batch_size sequences of S
tokens. In MoT every modality has its own weights, so a cell's *per-modality* token counts set the
shapes of its grouped GEMMs; uneven mixes make ranks wait for each other and pipelines drain unevenly
(paper §6.1). `pack_balanced` gives every cell the same per-modality counts:

  1. pool      draw pieces (the carry-over first) until they exceed the batch capacity by `slack`;
  2. atomic    items holding an atomic segment (an image) go whole into one sequence; every cell gets
               the same per-cell quota of atomic tokens, in whole lumps (1,024 per image), so atomic
               modalities balance exactly; items beyond the quota wait; short cells make it draw a
               few more atomic items (atomic_units.py);
  3. supply    draw more pieces if the splittable ones cannot fill the room left;
  4. targets   per cell and modality: (tokens already placed + the stream-order prefix of splittable
               pieces that fills the room) / K (splittable_fill.py);
  5. fill      those pieces, mixed-modality first, then largest first, each whole into the cell it fits
               best under the targets, else its longest head that fits (cut at a token boundary);
  6. top-up    the room left, from all splittable pieces in stream order, up to 2% over the targets;
  7. hand back everything unplaced returns to the carry-over in stream order (one deferral more;
               atomic items deferred `max_deferrals` times are placed first, above the quota).

The pool never exceeds POOL_LIMIT x capacity (+1 piece): the packer always terminates, with bounded
memory and a bounded carry-over, whatever the corpus. A step that misses a target (TARGET_RATIO per
modality, TARGET_PADDING) is reported once per stream and reason as a `PackingWarning` that gives the
best value those pieces allow (balance.py), and packed as well as it can be. Deterministic (no randomness beyond the
stream's seeded order) and computed from metadata only, so every rank plans the same global batch and
reads just its own cells. `pack_sequential` is the usual baseline: concatenate in stream order and cut
every S tokens. Why this shape: mot_parallel/DESIGN.md §8.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import List

import numpy as np

from .atomic_units import place_units
from .balance import balance_bound, batch_stats, max_load_lower_bound  # noqa: F401  (batch_stats: re-export)
from .cells import CellGrid
from .corpus import SegmentTable
from .pool import Pool
from .splittable_fill import TOP_UP_TOLERANCE, fill, fill_order, targets_from_supply
from .stream import Held, Piece, PieceSource

TARGET_RATIO = 1.05     # per-modality max/mean the balanced packer aims under (splittable modalities)
TARGET_PADDING = 0.02   # padded fraction it aims under
POOL_LIMIT = 3.0        # the pool holds at most this many batch capacities (plus one piece)


class PackingWarning(UserWarning):
    """A global batch could not be balanced as asked; said once per stream and `reason` (a modality
    name, or "padding")."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class GlobalBatch:
    cells: List[List[List[Piece]]]  # [cell][sequence] -> pieces, in order
    seq_len: int

    def cell_vectors(self, corpus: SegmentTable) -> np.ndarray:
        """[K, M] input tokens per modality per cell."""
        return np.stack([sum((corpus.vector(p.doc, p.start, p.end) for seq in cell for p in seq),
                             np.zeros(len(corpus.modalities), np.int64)) for cell in self.cells])

    def label_vector(self, corpus: SegmentTable) -> np.ndarray:
        """[M] training targets per modality in the whole batch, the loss normaliser (data/targets.py:
        next-token targets, a piece's last token has none; with continuous modalities also one diffusion
        target per patch)."""
        out = np.zeros(len(corpus.modalities), np.int64)
        for cell in self.cells:
            for seq in cell:
                for p in seq:
                    out += corpus.target_vector(p.doc, p.start, p.end)
        return out

    def padding(self) -> int:
        return sum(self.seq_len - sum(p.length for p in seq) for cell in self.cells for seq in cell)


def pack_sequential(stream: PieceSource, n_cells: int, seqs_per_cell: int, seq_len: int) -> GlobalBatch:
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
                    carry = Held(Piece(piece.doc, head.end, piece.end, piece.epoch), d)
                    piece = head
                cells[c][b].append(piece)
                free -= piece.length
    if carry:
        stream.put_back([carry])
    return GlobalBatch(cells, seq_len)


def pack_balanced(stream: PieceSource, n_cells: int, seqs_per_cell: int, seq_len: int,
                  slack: float = 0.03, max_deferrals: int = 8) -> GlobalBatch:
    corpus = stream.corpus
    grid = CellGrid(len(corpus.modalities), n_cells, seqs_per_cell, seq_len)
    pool = Pool(stream, max_tokens=int(POOL_LIMIT * grid.capacity))
    pool.fill_to(int(grid.capacity * (1 + slack)))                                     # 1. pool
    atomic = np.asarray(corpus.atomic, dtype=bool)
    place_units(grid, pool, atomic, max_deferrals, _splittable_share(pool, grid))  # 2. atomic
    pool.draw_splittable(int(grid.room().sum() * (1 + slack)))                         # 3. supply
    targets, chosen = targets_from_supply(grid, pool.splittable())                     # 4. targets
    fill(grid, fill_order(chosen), targets)                                            # 5. fill
    fill(grid, pool.splittable(), targets * (1 + TOP_UP_TOLERANCE))                    # 6. top-up
    pool.hand_back()                                                                   # 7. hand back
    _report_shortfalls(stream, grid, pool)
    return GlobalBatch(grid.seqs, seq_len)


def _splittable_share(pool: Pool, grid: CellGrid) -> np.ndarray:
    """[M] a first guess at each cell's splittable tokens per modality (to spread captions evenly)."""
    items = pool.splittable()
    vec = sum((it.vector for it in items), np.zeros(grid.load.shape[1], np.int64))
    return vec / grid.n_cells


_SAID: "weakref.WeakKeyDictionary[object, set]" = weakref.WeakKeyDictionary()


def _report_shortfalls(stream: PieceSource, grid: CellGrid, pool: Pool) -> None:
    """Warn once per stream and reason when this step missed a target, with the best possible value."""
    said = _SAID.setdefault(stream, set())
    where = f"{stream.corpus.prefix}: a global batch of {grid.n_cells} cells x {grid.seqs_per_cell} x " \
            f"{grid.seq_len} tokens"
    padding = float(grid.room().sum()) / grid.capacity
    if padding > TARGET_PADDING and "padding" not in said:
        said.add("padding")
        why = ("the atomic pieces (e.g. images) alone cannot fill the cells and no splittable pieces were "
               f"found within {POOL_LIMIT:g} batches of the stream" if not pool.splittable() else
               "the pieces left could not fill the cells without unbalancing them")
        warnings.warn(PackingWarning(f"{where} is {padding:.1%} padding: {why}; packing the best it can",
                                     "padding"), stacklevel=3)
    placed = [it for it in pool.items if it.placed and it.atomic]
    for m, name in enumerate(stream.corpus.modalities):
        total = int(grid.load[:, m].sum())
        ratio = float(grid.load[:, m].max()) * grid.n_cells / total if total else 1.0
        if ratio <= TARGET_RATIO or name in said:
            continue
        said.add(name)
        lumps = [int(it.vector[m]) for it in placed if it.vector[m]]
        bound = max_load_lower_bound(lumps, total - sum(lumps), grid.n_cells) * grid.n_cells / total
        why = (f"its {total} tokens, {sum(lumps)} of them in whole pieces of up to {max(lumps, default=0)}, allow "
               f"no better than {bound:.3f}" if bound > TARGET_RATIO else
               f"the best split of its pieces is {bound:.3f}, but sequence room or piece order got in the way")
        warnings.warn(PackingWarning(f"{where}: modality '{name}' has max/mean {ratio:.3f} (target {TARGET_RATIO}): "
                                     f"{why}; packing the best it can", name), stacklevel=3)
