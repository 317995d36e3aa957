"""Global-batch packing: which document pieces go into which sequence of which (rank, micro-batch) cell.

A global batch has K = DP x micro-batches cells, each holding B = micro_batch_size sequences of S
tokens. In MoT every modality has its own weights, so a cell's *per-modality* token counts set the
shapes of its grouped GEMMs; uneven mixes make ranks wait for each other and pipelines drain unevenly
(paper §6.1). `pack_balanced` gives every cell the same per-modality counts:

  1. pool      draw pieces (the carry-over first) until they exceed the batch capacity by `slack`;
  2. atomic    items holding an atomic segment (an image) go whole into one sequence; every cell gets
               the same per-cell quota of atomic tokens, in whole lumps (1,024 per image), so atomic
               modalities balance exactly; items beyond the quota wait; short cells make it draw a
               few more atomic items (atomic_units.py, dealt in rounds);
  3. supply    draw more pieces if the splittable ones cannot fill the room left;
  4. targets   per cell and modality: (tokens already placed + the stream-order prefix of splittable
               pieces that fills the room) / K;
  5. mixed     items no lane can cut evenly (two non-filler modalities, or much filler beside one) are
               water-filled one at a time, as before (mixed_items.py); what fits nowhere waits;
  6. lanes     the other items, in lanes by modality, cut into K slices where each cell's need of that
               modality is met, the filler's lane cut by room (splittable_slices.py);
  7. hand back everything unplaced returns to the carry-over in stream order (one deferral more;
               atomic items deferred `max_deferrals` times are placed first, above the quota).

The pool never exceeds (POOL_LIMIT + ASIDE_LIMIT) x capacity (+1 piece): the packer always terminates, with
bounded memory and a bounded carry-over, whatever the corpus. Oversized atomic items (more atomic tokens than
a cell's quota may ever hold: an image as long as a sequence) are set aside, not counted in POOL_LIMIT, so a
carry-over full of them cannot starve the step of the pieces it can place; once a cell's worth of them is
there, they fill one step of their own (atomic_units.candidate_quotas). A step that misses a target (TARGET_RATIO per
modality, TARGET_PADDING) is reported once per stream and reason as a `PackingWarning` that gives the
best value those pieces allow (balance.py), and packed as well as it can be. Deterministic (no randomness beyond the
stream's seeded order) and computed from metadata only, so every rank plans the same global batch and
reads just its own cells; in numpy over piece arrays, O(pieces), so that costs a rank about as much at 512
DP ranks as at 8 (step 5 excepted, on corpora that need it). `pack_sequential` is the usual baseline:
concatenate in stream order and cut every S tokens. Why this shape: mot_parallel/DESIGN.md §9, §20.
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np

from .atomic_units import UNIT_FILL_LIMIT, place_units
from .balance import balance_bound, batch_stats, max_load_lower_bound  # noqa: F401  (batch_stats: re-export)
from .cells import CellGrid
from .global_batch import GlobalBatch
from .pool import Pool
from .mixed_items import choose_filler, needs_water_fill, water_fill
from .splittable_slices import fill, supply
from .stream import Held, Piece, PieceSource

__all__ = ["GlobalBatch", "PackingWarning", "pack_balanced", "pack_sequential"]

TARGET_RATIO = 1.05     # per-modality max/mean the balanced packer aims under (splittable modalities)
TARGET_PADDING = 0.02   # padded fraction it aims under
POOL_LIMIT = 3.0        # the pool holds at most this many batch capacities (plus one piece) ...
WATER_FILL_ALL = 0.05  # water-fill every splittable item when this share of the room needs it (mixed_items.py)
ASIDE_LIMIT = 1.5       # ... plus this many of oversized atomic items (pool.py), a step's worth and some


class PackingWarning(UserWarning):
    """A global batch could not be balanced as asked; said once per stream and `reason` (a modality
    name, or "padding")."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


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
    return GlobalBatch.from_cells(cells, seq_len)


def pack_balanced(stream: PieceSource, n_cells: int, seqs_per_cell: int, seq_len: int,
                  slack: float = 0.03, max_deferrals: int = 8) -> GlobalBatch:
    corpus = stream.corpus
    grid = CellGrid(len(corpus.modalities), n_cells, seqs_per_cell, seq_len)
    pool = Pool(stream, max_tokens=int(POOL_LIMIT * grid.capacity), max_aside=int(ASIDE_LIMIT * grid.capacity),
                oversized_above=int(UNIT_FILL_LIMIT * grid.seqs_per_cell * grid.seq_len))
    pool.fill_to(int(grid.capacity * (1 + slack)))                                     # 1. pool
    atomic = np.asarray(corpus.atomic, dtype=bool)
    place_units(grid, pool, atomic, max_deferrals, _splittable_share(pool, grid))  # 2. atomic
    pool.draw_splittable(int(grid.room().sum() * (1 + slack)))                         # 3. supply
    _fill_splittable(grid, pool)                                                       # 4-6.
    pool.hand_back()                                                                   # 7. hand back
    _report_shortfalls(stream, grid, pool)
    return grid.batch()


def _fill_splittable(grid: CellGrid, pool: Pool) -> None:
    """4. targets from the stream-order prefix of splittable items that fills the room; 5. the items holding
    two modalities besides the filler's water-filled in rounds (mixed_items.py), what fits nowhere waits;
    6. the others cut into lanes (splittable_slices.py), to targets from a prefix that fills what is left."""
    items, take, head_vec = supply(grid, pool)
    filler = choose_filler(head_vec, take)
    hard = needs_water_fill(pool.vector, filler)
    more = None
    if take[hard[items]].sum() > WATER_FILL_ALL * take.sum():  # lanes could not even them out: water-fill all,
        hard = ~pool.atomic                                     # topping up from the whole pool, as ever
        more = np.setdiff1d(pool.splittable(), items)
    if hard[items].any():
        targets = (grid.load.sum(axis=0) + head_vec.sum(axis=0)) / grid.n_cells
        water_fill(grid, pool, targets, items[hard[items]], take[hard[items]], more)
        items, take, head_vec = supply(grid, pool, eligible=~hard)
    targets = (grid.load.sum(axis=0) + head_vec.sum(axis=0)) / grid.n_cells
    fill(grid, pool, targets, items, take, head_vec, filler)


def _splittable_share(pool: Pool, grid: CellGrid) -> np.ndarray:
    """[M] a first guess at each cell's splittable tokens per modality (to spread captions evenly)."""
    return pool.vector[pool.splittable()].sum(axis=0) / grid.n_cells


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
               f"found within {POOL_LIMIT:g} batches of the stream" if not len(pool.splittable()) else
               "the pieces left could not fill the cells without unbalancing them")
        warnings.warn(PackingWarning(f"{where} is {padding:.1%} padding: {why}; packing the best it can",
                                     "padding"), stacklevel=3)
    placed = pool.vector[pool.atomic & pool.placed]
    for m, name in enumerate(stream.corpus.modalities):
        total = int(grid.load[:, m].sum())
        ratio = float(grid.load[:, m].max()) * grid.n_cells / total if total else 1.0
        if ratio <= TARGET_RATIO or name in said:
            continue
        said.add(name)
        lumps = [int(v) for v in placed[:, m] if v]
        bound = max_load_lower_bound(lumps, total - sum(lumps), grid.n_cells) * grid.n_cells / total
        why = (f"its {total} tokens, {sum(lumps)} of them in whole pieces of up to {max(lumps, default=0)}, allow "
               f"no better than {bound:.3f}" if bound > TARGET_RATIO else
               f"the best split of its pieces is {bound:.3f}, but sequence room or piece order got in the way")
        warnings.warn(PackingWarning(f"{where}: modality '{name}' has max/mean {ratio:.3f} (target {TARGET_RATIO}): "
                                     f"{why}; packing the best it can", name), stacklevel=3)
