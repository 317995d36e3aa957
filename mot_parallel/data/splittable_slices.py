"""Steps 4 and 6 of balanced packing: splittable items (text, speech, ...) fill the room atomic items left.

What is placed: the stream-order prefix of the splittable items that fills the room exactly (the last one
cut; the oldest pieces first, FIFO). How: each item joins a *lane*, in stream order; a lane is one long run
of tokens, cut into K consecutive slices, one per cell (`lanes`):
  - items holding one non-filler modality (alone, or beside a little filler: a transcript with its speech)
    join that modality's lane, which is cut where the modality's running count reaches each cell's share:
    the emptiest cells raised to a common level (what they hold, plus what later lanes bring evenly), so
    each cell gets its need to the token;
  - the filler lane (single-modality items of the modality with most of them: text, usually) is cut so
    each cell's slices fill its room, no more than 2% over the filler's target, so the filler modality is
    even wherever the others are. Its slice ends never leave a head or a tail under `MIN_CUT` tokens
    where they can move (down) instead.
Items mixing more are water-filled before (mixed_items.py). Cutting is a few searchsorted / cumsum passes
over the lanes' runs, O(pieces) numpy whatever K is, where placing items one at a time into the cell that
fits best cost O(pieces x K) (DESIGN §20). Within a cell the slices are laid into its sequences in order,
cut at sequence ends.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .cells import CellGrid
from .pieces import Pieces, Runs
from .pool import Pool

MIN_CUT = 4               # no head or tail shorter than this is cut off where avoidable (almost no labels)
TOP_UP_TOLERANCE = 0.02   # the filler may bring a cell's modality this far above its target


class Lane:
    """Pool items (ids, stream order) laid end to end: item i covers [start[i], start[i] + take[i])."""

    def __init__(self, items: np.ndarray, take: np.ndarray, left: np.ndarray, runs: Runs):
        self.items, self.take, self.left = items, take, left
        self.start = np.cumsum(take) - take
        self.total = int(take.sum())
        self.runs = runs  # piece = index into items; offset relative to the item

    def cuts_by_count(self, m: int, counts: np.ndarray) -> np.ndarray:
        """Lane positions right after the counts[k]-th token of modality m (0 -> 0; all of them -> the end)."""
        r = self.runs
        mine = r.mode == m
        end = (self.start[r.piece] + r.offset + r.length)[mine]
        have = np.cumsum(r.length[mine])
        if not len(have):
            return np.zeros(len(counts), np.int64)
        k = np.minimum(np.searchsorted(have, counts, side="left"), len(have) - 1)
        pos = end[k] - (have[k] - counts)
        return np.where(counts <= 0, 0, np.where(counts >= have[-1], self.total, pos))

    def snap_down(self, x: np.ndarray) -> np.ndarray:
        """The largest position <= x that cuts no item into a head or tail under MIN_CUT (an item's tail
        counts what follows it outside the lane too)."""
        i = np.maximum(np.searchsorted(self.start, x, side="right") - 1, 0)
        a, b = self.start[i], self.start[i] + self.left[i]
        inside = (x > a) & (x < b)
        tail_cut = np.where(b - MIN_CUT - a >= MIN_CUT, b - MIN_CUT, a)
        out = np.where(inside & (x - a < MIN_CUT), a, x)
        return np.where(inside & (x - a >= MIN_CUT) & (b - x < MIN_CUT), tail_cut, out)

    def slices(self, ends: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(item index, first, last token relative to the item, cell) of every fragment when cell k gets
        [ends[k - 1], ends[k])."""
        stop = int(ends[-1]) if len(ends) else 0
        bounds = np.unique(np.concatenate([[0, stop], self.start[self.start < stop], ends]))
        lo, hi = bounds[:-1], bounds[1:]
        item = np.searchsorted(self.start, lo, side="right") - 1
        cell = np.searchsorted(ends, lo, side="right")
        return item, lo - self.start[item], hi - self.start[item], cell


def capped(ideal: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """c[k] = min(ideal[k], c[k - 1] + cap[k]) with c[-1] = 0, without a loop (cap >= 0, ideal rising)."""
    room = np.cumsum(cap)
    return room + np.minimum.accumulate(np.minimum(ideal - room, 0))


def _cut(lane: Lane, ideal: np.ndarray, cap: np.ndarray, rounds: int = 8) -> np.ndarray:
    """Slice ends as near `ideal` as allowed (snap_down), no slice over its cap: what a cell cannot take
    waits for the next step, it is not pushed onto the next cell. Iterates snapping and capping to a fixed
    point (a few rounds; the last capping keeps every cap even where a snap is left undone)."""
    ends = ideal
    for _ in range(rounds):
        nxt = capped(lane.snap_down(ends), cap)
        if np.array_equal(nxt, ends):
            break
        ends = nxt
    return capped(ends, cap)


def supply(grid: CellGrid, pool: Pool, eligible: Optional[np.ndarray] = None
           ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item ids, tokens each gives, [n, M] the heads' vectors): the stream-order prefix of splittable items
    (of those `eligible`, a mask over the pool) that fills the room, the last one cut."""
    items = pool.splittable()
    if eligible is not None:
        items = items[eligible[items]]
    left = pool.left()[items]
    room = int(grid.room().sum())
    total = np.cumsum(left)
    n = min(int(np.searchsorted(total, room, side="left")) + 1, len(items))
    items, take = items[:n], left[:n].copy()
    if n and total[n - 1] > room:
        take[-1] -= int(total[n - 1]) - room
    return items, take, head_runs(pool, items, take).vectors(n, grid.load.shape[1])


def head_runs(pool: Pool, items: np.ndarray, take: np.ndarray) -> Runs:
    """Runs of the items' heads of `take` tokens, `piece` numbering the items 0..n-1."""
    where = np.full(len(pool.pieces), -1)
    where[items] = np.arange(len(items))
    r = pool.runs
    owner = where[r.piece]
    offset = r.offset - pool.done[np.maximum(r.piece, 0)]
    keep = (owner >= 0) & (offset + r.length > 0)
    owner, offset, length, mode = owner[keep], offset[keep], r.length[keep], r.mode[keep]
    length = np.minimum(offset + length, take[owner]) - np.maximum(offset, 0)
    offset = np.maximum(offset, 0)
    ok = length > 0
    return Runs(owner[ok], mode[ok], length[ok], offset[ok])


def lanes(pool: Pool, items: np.ndarray, take: np.ndarray, head_vec: np.ndarray, filler: int
          ) -> List[Tuple[int, Lane]]:
    """(modality, lane) of every lane, in the order they are cut: first the items holding the filler and
    one other modality, in the lane of that modality; then the single-modality items, a lane per modality,
    which even out what the first lanes brought; the filler's last: it holds only single-modality items, so
    cutting it by room changes no other modality's counts."""
    if not len(items):
        return []
    runs, left = head_runs(pool, items, take), pool.left()[items]
    pure = (head_vec > 0).sum(axis=1) == 1
    others = head_vec.copy()
    others[:, filler] = 0
    lane_of = np.where(others.any(axis=1), np.argmax(others, axis=1), filler)
    codes = np.unique(lane_of * 2 + ~pure).tolist()  # (modality, mixed) of every lane present
    out = []
    for mixed, m in sorted(((c % 2, c // 2) for c in codes), key=lambda k: (k[1] == filler, -k[0], k[1])):
        sel = np.flatnonzero((lane_of == m) & (pure != bool(mixed)))
        renumber = np.full(len(items), -1)
        renumber[sel] = np.arange(len(sel))
        mine = renumber[runs.piece] >= 0
        lane_runs = Runs(renumber[runs.piece[mine]], runs.mode[mine], runs.length[mine], runs.offset[mine])
        order = np.lexsort((lane_runs.offset, lane_runs.piece))
        lane_runs = Runs(*(getattr(lane_runs, f)[order] for f in ("piece", "mode", "length", "offset")))
        out.append((m, Lane(items[sel], take[sel], left[sel], lane_runs)))
    return out


def _shares(current: np.ndarray, have: int, fits: np.ndarray) -> np.ndarray:
    """Split `have` tokens over cells holding `current` so the fullest stay as low as possible: raise the
    emptiest to a common level L (sum of min(max(L - current, 0), fits) = have), no cell over what it fits."""
    fits = np.maximum(fits, 0).astype(np.float64)
    if have >= fits.sum():
        return fits
    lo, hi = float(current.min()), float((current + fits).max())
    for _ in range(60):  # bisection: a fixed number of steps, the same on every rank
        mid = (lo + hi) / 2
        if np.clip(mid - current, 0, fits).sum() < have:
            lo = mid
        else:
            hi = mid
    return np.clip(hi - current, 0, fits)


def fill(grid: CellGrid, pool: Pool, targets: np.ndarray, items: np.ndarray, take: np.ndarray,
         head_vec: np.ndarray, filler: int) -> None:
    """Slice the lanes into the cells (see the module doc) and place the fragments, lane by lane."""
    all_lanes = lanes(pool, items, take, head_vec, filler)
    content = [lane.runs.vectors(len(lane.items), len(targets)).sum(axis=0) for _, lane in all_lanes]
    content = np.array(content).reshape(len(all_lanes), len(targets))
    later = np.cumsum(content[::-1], axis=0)[::-1] - content  # what the lanes after each one hold
    for n, (m, lane) in enumerate(all_lanes):
        room = grid.room()
        if n < len(all_lanes) - 1:  # what the lanes still to come bring, evenly, counts as there
            held = grid.load[:, m] + later[n][m] / grid.n_cells
            fits = np.minimum(room * content[n][m] // max(lane.total, 1),  # about what the room holds of it,
                              np.ceil(targets[m] * (1 + TOP_UP_TOLERANCE)) - held)  # and no cell much over
            share = _shares(held, int(content[n][m]), fits)  # a cell short of room: the rest waits
            ideal = lane.cuts_by_count(m, np.floor(np.cumsum(share) + 0.5).astype(np.int64))
            ends = capped(ideal, np.minimum(room, np.diff(ideal, prepend=0)))  # a cell short of room: the rest waits
        else:  # the filler: each cell's room, but no more of its modality than the top-up tolerance allows
            cap = np.minimum(room, np.maximum(np.ceil(targets[m] * (1 + TOP_UP_TOLERANCE)) - grid.load[:, m], 0))
            total = np.cumsum(cap).astype(np.int64)
            ideal = total if lane.total >= total[-1] else total * lane.total // max(int(total[-1]), 1)
            ends = _cut(lane, ideal, cap.astype(np.int64))
        item, a, b, cell = lane.slices(ends)
        ok = b > a
        if ok.any():
            place(grid, pool, lane.items[item[ok]], a[ok], b[ok], cell[ok])


def place(grid: CellGrid, pool: Pool, item: np.ndarray, a: np.ndarray, b: np.ndarray, cell: np.ndarray) -> None:
    """Place fragments [a, b) of pool items (relative to their unplaced heads; in lane order) into cells,
    laid into each cell's sequences one after another."""
    order = np.argsort(cell, kind="stable")
    item, a, b, cell = item[order], a[order], b[order], cell[order]
    head = pool.pieces.start[item] + pool.done[item]
    length = b - a
    frag, first, last, slot = _into_sequences(grid.free, cell, length)
    start = head[frag] + a[frag]
    pieces = Pieces(pool.pieces.doc[item[frag]], start + first, start + last, pool.pieces.epoch[item[frag]],
                    np.zeros(len(frag), np.int64))
    vectors = Runs.of(pool.corpus, pieces.doc, pieces.start, pieces.end).vectors(len(pieces), grid.load.shape[1])
    grid.place(slot // grid.seqs_per_cell, slot % grid.seqs_per_cell, pieces, vectors)
    extent = np.zeros(len(pool.pieces), np.int64)
    np.maximum.at(extent, item, b)
    pool.done += extent


def _into_sequences(free: np.ndarray, cell: np.ndarray, length: np.ndarray):
    """Lay each cell's fragments (sorted by cell) into its sequences' free space one after another, cutting
    at sequence ends: (fragment, first, last token relative to the fragment, flat sequence id) per part."""
    k_cells, seqs = free.shape
    if seqs == 1:
        return np.arange(len(cell)), np.zeros(len(cell), np.int64), length, cell
    room = free.sum(axis=1)
    base = np.cumsum(room) - room
    within = np.cumsum(length) - length
    first_of_cell = np.searchsorted(cell, np.arange(k_cells))
    within = within - within[np.minimum(first_of_cell, len(cell) - 1)][cell] if len(cell) else within
    gstart = base[cell] + within
    gend = gstart + length
    seq_end = (base[:, None] + np.cumsum(free, axis=1)).ravel()
    bounds = np.unique(np.concatenate([gstart, gend, seq_end]))
    lo, hi = bounds[:-1], bounds[1:]
    frag = np.maximum(np.searchsorted(gstart, lo, side="right") - 1, 0)
    keep = (lo >= gstart[frag]) & (lo < gend[frag])
    lo, hi, frag = lo[keep], hi[keep], frag[keep]
    return frag, lo - gstart[frag], hi - gstart[frag], np.searchsorted(seq_end, lo, side="right")
