"""Steps 4-6 of balanced packing: splittable items (text, speech, ...) fill the room atomic items left.

Per-cell targets come from the pieces that will fill the room: the stream-order prefix of the
splittable items that covers it, plus the captions atomic items already brought. Each item then goes
(mixed-modality ones first, then largest first) to the cell it fits best without pushing any modality
of that cell over its target; where no cell takes it whole, the longest head that fits goes to the
cell taking the most and the tail goes on (water-filling, cut at token boundaries; never a head or
tail under `MIN_CUT` tokens).
A last pass (top-up) fills the remaining room from all pieces left, in stream order, allowing
`TOP_UP_TOLERANCE` over the targets, so padding stays near zero.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .cells import CellGrid
from .pool import PoolItem, Runs

MIN_CUT = 4               # no head or tail shorter than this is cut off (it would carry almost no labels)
TOP_UP_TOLERANCE = 0.02   # the top-up may bring a cell's modality this far above its target


def targets_from_supply(grid: CellGrid, items: Sequence[PoolItem]) -> Tuple[np.ndarray, List[PoolItem]]:
    """([M] per-cell target tokens of each modality, the stream-order prefix of items that fills the room).

    The last item of the prefix counts pro rata, so the targets add up to exactly the room."""
    room = int(grid.room().sum())
    chosen, supply, have = [], np.zeros(grid.load.shape[1]), 0
    for it in items:
        if have >= room:
            break
        share = min(1.0, (room - have) / it.length)
        supply += it.vector * share
        have += it.length
        chosen.append(it)
    return (grid.load.sum(axis=0) + supply) / grid.n_cells, chosen


def longest_prefix(runs: Runs, cap_left: np.ndarray, room: np.ndarray) -> np.ndarray:
    """[K] the longest head of an item (given as modality runs) each cell takes without any modality
    exceeding its cap_left [K, M], and within the cell's room."""
    n = np.zeros(len(room), np.int64)
    left = cap_left.copy()
    open_ = np.ones(len(room), bool)
    for m, k in runs:
        take = np.where(open_, np.minimum(left[:, m], k), 0)
        n += take
        left[:, m] -= take
        open_ &= take == k
    return np.minimum(n, room)


def _allowed(n: np.ndarray, length: int) -> np.ndarray:
    """Heads that leave neither piece shorter than MIN_CUT (a whole item is always allowed)."""
    cut = np.minimum(n, length - MIN_CUT)
    return np.where(n >= length, length, np.where(cut >= MIN_CUT, cut, 0))


def fill(grid: CellGrid, items: Sequence[PoolItem], caps: np.ndarray) -> None:
    """Place items (in the given order) into cells under per-cell caps [M] on each modality."""
    cap_tokens = np.ceil(caps - 1e-9).astype(np.int64)  # a modality under one token per cell still gets placed
    for item in items:
        while not item.placed:
            room = grid.room()
            if not room.any():
                return
            cap_left = np.maximum(cap_tokens - grid.load, 0)
            n = _allowed(longest_prefix(item.runs, cap_left, room), item.length)
            if n.max() <= 0:
                break
            whole = n == item.length
            if whole.any():  # best fit: the cell whose allowance it uses up most exactly
                slack = np.minimum(cap_left.sum(axis=1), room) - item.length
                c = int(np.argmin(np.where(whole, slack, np.iinfo(np.int64).max)))
            else:
                c = int(np.argmax(n))
            grid.place_head(c, item, int(n[c]))


def fill_order(items: Sequence[PoolItem]) -> List[PoolItem]:
    """Mixed-modality items first (a head must fit every modality it crosses, so they need the room
    that single-modality items could take anywhere), then largest first (fewer cuts), then stream order."""
    return sorted(items, key=lambda it: (-len(it.runs), -it.length, it.index))
