"""Step 5 of balanced packing: splittable items no lane can cut evenly, water-filled one at a time.

A lane (splittable_slices.py) is cut where its own modality's count says, so whatever else its items hold
comes along unevenly: a lane of [speech, music] documents cut by speech hands a cell all the music of the
next document or none. That is harmless for a little filler (a transcript with its speech: the filler lane
evens it out), not for a second non-filler modality or a large filler share. Those items (`needs_water_fill`)
are placed first, largest first, each whole into the cell it fits best under every modality's target, else
its longest head that fits into the cell taking most (never a head or tail under MIN_CUT); then again up to
the top-up tolerance; what fits nowhere waits for the next step. This costs O(items x K) numpy, so it is
kept to these items (none in the shipped mixes); the lanes then give each cell exactly what it lacks.
"""
from __future__ import annotations

import numpy as np

from .cells import CellGrid
from .pieces import Runs
from .pool import Pool
from .splittable_slices import MIN_CUT, TOP_UP_TOLERANCE, head_runs, place

LANE_FILLER_SHARE = 0.25  # an item whose filler share is above this is water-filled, not cut in a lane


def needs_water_fill(vectors: np.ndarray, filler: int) -> np.ndarray:
    """[N] items holding two non-filler modalities, or one and more than LANE_FILLER_SHARE filler."""
    others = (np.delete(vectors, filler, axis=1) > 0).sum(axis=1)
    share = vectors[:, filler] / np.maximum(vectors.sum(axis=1), 1)
    return (others > 1) | ((others == 1) & (share > LANE_FILLER_SHARE))


def choose_filler(head_vec: np.ndarray, take: np.ndarray) -> int:
    """The filler modality (the lanes' room filler): the one leaving the fewest tokens to water-fill, then
    the one with the most tokens in single-modality items (text, in every shipped mix)."""
    present = np.flatnonzero(head_vec.sum(axis=0))
    if not len(present):
        return 0
    pure = head_vec[(head_vec > 0).sum(axis=1) == 1].sum(axis=0)
    hard = [int(take[needs_water_fill(head_vec, int(f))].sum()) for f in present]
    return int(min(present, key=lambda f: (hard[list(present).index(f)], -pure[f], f)))


def longest_prefix(mode: np.ndarray, length: np.ndarray, cap_left: np.ndarray, room: np.ndarray) -> np.ndarray:
    """[K] the longest head of an item (modality runs) each cell takes without any modality exceeding its
    cap_left [K, M], and within the cell's room."""
    n = np.zeros(len(room), np.int64)
    left = cap_left.copy()
    open_ = np.ones(len(room), bool)
    for m, k in zip(mode.tolist(), length.tolist()):
        take = np.where(open_, np.minimum(left[:, m], k), 0)
        n += take
        left[:, m] -= take
        open_ &= take == k
    return np.minimum(n, room)


def _allowed(n: np.ndarray, length: int) -> np.ndarray:
    """Heads that leave neither piece shorter than MIN_CUT (a whole item is always allowed)."""
    cut = np.minimum(n, length - MIN_CUT)
    return np.where(n >= length, length, np.where(cut >= MIN_CUT, cut, 0))


def _fill_one(runs: Runs, j: int, left: int, cap: np.ndarray, load: np.ndarray, room: np.ndarray, heads: list):
    """Place item j's remaining `left` tokens (its runs from offset `done`) as heads; tokens left."""
    mine = runs.piece == j
    mode, length, offset = runs.mode[mine], runs.length[mine], runs.offset[mine]
    while left > 0 and room.any():
        done = int(length.sum()) - left
        keep = offset + length > done
        rl = (offset + length)[keep] - np.maximum(offset[keep], done)
        n = _allowed(longest_prefix(mode[keep], rl, np.maximum(cap - load, 0), room), left)
        if n.max() <= 0:
            break
        whole = n == left
        if whole.any():  # best fit: the cell whose allowance it uses up most exactly
            slack = np.minimum(np.maximum(cap - load, 0).sum(axis=1), room) - left
            c = int(np.argmin(np.where(whole, slack, np.iinfo(np.int64).max)))
        else:
            c = int(np.argmax(n))
        k, pos = int(n[c]), done
        for m, a, b in zip(mode.tolist(), offset.tolist(), (offset + length).tolist()):
            load[c, m] += max(0, min(b, pos + k) - max(a, pos))
        room[c] -= k
        heads.append((j, done, done + k, c))
        left -= k
    return left


def water_fill(grid: CellGrid, pool: Pool, targets: np.ndarray, items: np.ndarray, take: np.ndarray,
               more: np.ndarray = None) -> None:
    """Place heads of the given items (see the module doc): largest first up to the targets, then in stream
    order, with the pool's `more` items, up to the top-up tolerance; what is left waits for the next step."""
    more = np.zeros(0, np.int64) if more is None else more
    every = np.concatenate([items, more])
    order = np.argsort(every, kind="stable")  # stream order
    every, limit = every[order], np.concatenate([take, pool.left()[more]])[order]
    runs = head_runs(pool, every, limit)
    load, room, heads = grid.load.copy(), grid.room(), []
    left = limit.copy()
    first = order < len(items)  # the prefix's items, by position in `every`
    passes = ((np.flatnonzero(first)[np.lexsort((np.flatnonzero(first), -limit[first]))], np.ceil(targets - 1e-9)),
              (np.arange(len(every)), np.ceil(targets * (1 + TOP_UP_TOLERANCE))))
    for sequence, cap in passes:
        for j in sequence.tolist():
            if left[j]:
                left[j] = _fill_one(runs, j, int(left[j]), cap.astype(np.int64), load, room, heads)
    if heads:
        j, a, b, c = (np.array(x, np.int64) for x in zip(*heads))
        order = np.lexsort((a, j))  # an item's heads in order: each is placed after the one before it
        place(grid, pool, every[j[order]], a[order], b[order], c[order])
