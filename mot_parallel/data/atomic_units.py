"""Step 2 of balanced packing: atomic items (those holding an image or another atomic segment).

An atomic item goes whole into one sequence, so its atomic-modality tokens come in lumps (1,024 for an
image); cells can only hold the same image tokens if the step's images divide evenly. So every cell
gets a per-cell *quota* of atomic-modality tokens, a multiple of the lump size (the gcd of the items'
contents) no larger than the pool's supply per cell, and items are dealt largest first, each to the
cell with the most quota left that can take it whole; what does not fit its quota waits for the next
step (the supply then includes it, so the quota adapts and nothing waits for long). Items deferred
`max_deferrals` times are pinned: placed first, even above the quota. A few quotas are tried (the
supply's, one lump lower, raised to the pinned items) and the most even result wins, then the one
placing the most tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .cells import CellGrid
from .pool import Pool, PoolItem

UNIT_FILL_LIMIT = 0.97  # a cell's atomic quota (with captions) may take at most this share of its tokens
REFILL_LIMIT = 0.5      # draws for more atomic items add at most this many batch capacities to the pool


@dataclass
class UnitPlan:
    quota: np.ndarray   # [M] per-cell cap on each atomic modality's tokens (0 elsewhere)
    slots: List[Optional[Tuple[int, int]]]  # (cell, sequence) of each item, None = deferred
    imbalance: float    # max over atomic modalities of max/mean cell load
    placed_tokens: int
    shortfall: int      # atomic tokens the other cells lack to match the fullest one


def supply_quota(units: Sequence[PoolItem], atomic: np.ndarray, grid: CellGrid) -> np.ndarray:
    """The largest per-cell atomic quota the pool's supply covers, in whole lumps, that fits a cell."""
    vecs = np.array([u.vector for u in units]).reshape(len(units), -1)
    quota = np.zeros(len(atomic), np.int64)
    for m in np.flatnonzero(atomic):
        lump = _lump(vecs[:, m])
        quota[m] = lump * (int(vecs[:, m].sum()) // (grid.n_cells * lump))
    atomic_tokens = int(vecs[:, atomic].sum())
    if atomic_tokens:
        per_token = sum(u.length for u in units) / atomic_tokens  # item tokens per atomic token
        limit = UNIT_FILL_LIMIT * grid.seqs_per_cell * grid.seq_len
        est = quota.sum() * per_token
        if est > limit:
            for m in np.flatnonzero(atomic):
                lump = _lump(vecs[:, m])
                quota[m] = lump * int(quota[m] * limit / est // lump)
    return quota


def _lump(contents: np.ndarray) -> int:
    g = 0
    for v in contents[contents > 0].tolist():
        g = gcd(g, int(v))
    return max(g, 1)


def candidate_quotas(base: np.ndarray, units: Sequence[PoolItem], atomic: np.ndarray,
                     pinned: Sequence[bool], n_cells: int) -> List[np.ndarray]:
    """Raised to the largest pinned item, raised to one large item per cell, the supply's quota, one lump
    lower (never down to zero): the largest first."""
    vecs = np.array([u.vector for u in units]).reshape(len(units), -1)
    lower = base.copy()
    for m in np.flatnonzero(atomic):
        lump = _lump(vecs[:, m])
        if base[m] >= 2 * lump:
            lower[m] -= lump
    out = [base, lower]
    if len(units) >= n_cells:
        # items bigger than the (fill-capped) quota, e.g. an image as long as a sequence, never fit it: they
        # would wait in the carry-over until pinned, crowding out the text the other cells need (a pool of
        # such deferred images left 30-60% of several global batches padding). Once a cell's worth of them
        # is there, a quota admitting one per cell places them all in one even step.
        one_each = np.where(atomic, -np.sort(-vecs, axis=0)[n_cells - 1], 0)
        if (one_each > base).any():
            out.insert(0, np.maximum(base, one_each))
    if any(pinned):
        out.insert(0, np.maximum(base, np.where(atomic, vecs[np.asarray(pinned)].max(axis=0), 0)))
    unique = []
    for q in out:
        if not any(np.array_equal(q, u) for u in unique):
            unique.append(q)
    return unique


def plan_units(units: Sequence[PoolItem], pinned: Sequence[bool], quota: np.ndarray, atomic: np.ndarray,
               grid: CellGrid, split_share: np.ndarray) -> UnitPlan:
    """Deal the items to cells under `quota` (on copies of the grid's state); nothing is placed yet."""
    free, load, attn = grid.free.copy(), grid.load.copy(), grid.attn.copy()
    safe_quota = np.where(quota > 0, quota, 1).astype(np.float64)[atomic]
    safe_share = np.where(split_share > 0, split_share, 1.0)[~atomic]
    order = sorted(range(len(units)), key=lambda i: (not pinned[i], -int(units[i].vector[atomic].sum()),
                                                     -units[i].length, units[i].index))
    slots: List[Optional[Tuple[int, int]]] = [None] * len(units)
    for i in order:
        u = units[i]
        ok = (free >= u.length).any(axis=1)
        if not pinned[i]:
            ok &= (load[:, atomic] + u.vector[atomic] <= quota[atomic]).all(axis=1)
        if not ok.any():
            continue
        deficit = ((quota[atomic] - load[:, atomic]) / safe_quota).sum(axis=1)
        captions = (load[:, ~atomic] / safe_share).sum(axis=1)   # spread captions: a tie-break
        score = deficit - 1e-3 * captions - 1e-6 * attn / max(float(attn.max()), 1.0)
        c = int(np.argmax(np.where(ok, score, -np.inf)))
        fit = np.flatnonzero(free[c] >= u.length)
        b = int(fit[np.argmin(free[c, fit])])
        free[c, b] -= u.length
        load[c] += u.vector
        attn[c] += float(u.length) ** 2
        slots[i] = (c, b)
    heads = load[:, atomic]
    return UnitPlan(quota, slots, _imbalance(heads), sum(u.length for u, s in zip(units, slots) if s is not None),
                    int((heads.max(axis=0) * len(heads) - heads.sum(axis=0)).sum()))


def _imbalance(load: np.ndarray) -> float:
    mean = load.mean(axis=0)
    used = mean > 0
    return float((load.max(axis=0)[used] / mean[used]).max()) if used.any() else 1.0


def plan_best(grid: CellGrid, units: Sequence[PoolItem], atomic: np.ndarray, max_deferrals: int,
              split_share: np.ndarray) -> UnitPlan:
    """The most even of the candidate quotas' plans, then the one placing the most tokens (the first
    perfectly even one, largest quota first, ends the search: planning runs every step)."""
    if not units:
        return UnitPlan(np.zeros(len(atomic), np.int64), [], 1.0, 0, 0)
    pinned = [u.deferrals >= max_deferrals for u in units]
    plans = []
    for quota in candidate_quotas(supply_quota(units, atomic, grid), units, atomic, pinned, grid.n_cells):
        plans.append(plan_units(units, pinned, quota, atomic, grid, split_share))
        if plans[-1].imbalance <= 1 + 1e-9:
            break
    return min(plans, key=lambda p: (round(p.imbalance, 9), -p.placed_tokens))


def place_units(grid: CellGrid, pool: Pool, atomic: np.ndarray, max_deferrals: int,
                split_share: np.ndarray, refills: int = 3) -> UnitPlan:
    """Plan; while some cells fall short of the fullest, draw more atomic items (twice the shortfall)
    and plan again; then place the plan's items. These draws add at most REFILL_LIMIT batches to the
    pool (what they bring beyond the shortfall waits in the carry-over, so it must stay small)."""
    limit = pool.tokens + int(REFILL_LIMIT * grid.capacity)
    plan = plan_best(grid, pool.units(), atomic, max_deferrals, split_share)
    for _ in range(refills):
        if not plan.shortfall or not pool.draw_units(2 * plan.shortfall, limit):
            break
        plan = plan_best(grid, pool.units(), atomic, max_deferrals, split_share)
    for u, slot in zip(pool.units(), plan.slots):
        if slot is not None:
            grid.place(*slot, u.piece, u.vector)
            u.placed = True
    return plan
