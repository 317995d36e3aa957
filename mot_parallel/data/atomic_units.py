"""Step 2 of balanced packing: atomic items (those holding an image or another atomic segment).

An atomic item goes whole into one sequence, so its atomic-modality tokens come in lumps (1,024 for an
image); cells can only hold the same image tokens if the step's images divide evenly. So every cell
gets a per-cell *quota* of atomic-modality tokens, a multiple of the lump size (the gcd of the items'
contents) no larger than the pool's supply per cell, and items are dealt largest first, each to a cell
with the most quota left that can take it whole; what does not fit its quota waits for the next step
(the supply then includes it, so the quota adapts and nothing waits for long). Items deferred
`max_deferrals` times are pinned: placed first, even above the quota. A few quotas are tried (the
supply's, one lump lower, raised to the pinned items) and the most even result wins, then the one
placing the most tokens.

Dealing runs in rounds over items of one size (the same atomic tokens): each round ranks the cells that
can still take that size once and gives the next items, longest first, one per cell in rank order, so a
round is a few numpy passes over the K cells whatever K is (a 4,096-cell batch of ~6k images takes a
handful of rounds, where dealing one item at a time cost O(items x K)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cells import CellGrid
from .pool import Pool

UNIT_FILL_LIMIT = 0.97  # a cell's atomic quota (with captions) may take at most this share of its tokens
REFILL_LIMIT = 0.5      # draws for more atomic items add at most this many batch capacities to the pool


@dataclass
class Units:
    """The unplaced atomic items of the pool (stream order)."""
    index: np.ndarray   # pool item ids
    vector: np.ndarray  # [U, M]
    length: np.ndarray
    pinned: np.ndarray

    @classmethod
    def of(cls, pool: Pool, max_deferrals: int) -> "Units":
        ids = pool.units()
        return cls(ids, pool.vector[ids], pool.length[ids], pool.pieces.deferrals[ids] >= max_deferrals)

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class UnitPlan:
    quota: np.ndarray   # [M] per-cell cap on each atomic modality's tokens (0 elsewhere)
    cell: np.ndarray    # [U] cell of each item, -1 = deferred
    seq: np.ndarray     # [U] its sequence
    imbalance: float    # max over atomic modalities of max/mean cell load
    placed_tokens: int
    shortfall: int      # atomic tokens the other cells lack to match the fullest one


def _lump(contents: np.ndarray) -> int:
    g = int(np.gcd.reduce(contents[contents > 0])) if (contents > 0).any() else 0
    return max(g, 1)


def supply_quota(units: Units, atomic: np.ndarray, grid: CellGrid) -> np.ndarray:
    """The largest per-cell atomic quota the pool's supply covers, in whole lumps, that fits a cell."""
    vecs, quota = units.vector, np.zeros(len(atomic), np.int64)
    for m in np.flatnonzero(atomic):
        lump = _lump(vecs[:, m])
        quota[m] = lump * (int(vecs[:, m].sum()) // (grid.n_cells * lump))
    atomic_tokens = int(vecs[:, atomic].sum())
    if atomic_tokens:
        per_token = int(units.length.sum()) / atomic_tokens  # item tokens per atomic token
        limit = UNIT_FILL_LIMIT * grid.seqs_per_cell * grid.seq_len
        est = quota.sum() * per_token
        if est > limit:
            for m in np.flatnonzero(atomic):
                lump = _lump(vecs[:, m])
                quota[m] = lump * int(quota[m] * limit / est // lump)
    return quota


def candidate_quotas(base: np.ndarray, units: Units, atomic: np.ndarray, n_cells: int) -> list:
    """Raised to the largest pinned item, raised to one large item per cell, the supply's quota, one lump
    lower (never down to zero): the largest first."""
    vecs = units.vector
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
        one_each = np.where(atomic, -np.partition(-vecs, n_cells - 1, axis=0)[n_cells - 1], 0)
        if (one_each > base).any():
            out.insert(0, np.maximum(base, one_each))
    if units.pinned.any():
        out.insert(0, np.maximum(base, np.where(atomic, vecs[units.pinned].max(axis=0), 0)))
    unique = []
    for q in out:
        if not any(np.array_equal(q, u) for u in unique):
            unique.append(q)
    return unique


class _Dealer:
    """The cells' state while one quota's plan is dealt (copies: nothing is placed yet)."""

    def __init__(self, grid: CellGrid, quota: np.ndarray, atomic: np.ndarray, split_share: np.ndarray):
        self.free, self.load, self.attn = grid.free.copy(), grid.load.copy(), grid.attn.copy()
        self.quota, self.atomic = quota, atomic
        self.safe_quota = np.where(quota > 0, quota, 1).astype(np.float64)[atomic]
        self.safe_share = np.where(split_share > 0, split_share, 1.0)[~atomic]

    def ranked(self, size: np.ndarray, pinned: bool) -> np.ndarray:
        """Cells that can take an item of atomic content `size` under the quota (any cell, if pinned),
        most quota left first (then fewest captions, least attention: tie-breaks), as cell ids."""
        heads = self.load[:, self.atomic]
        ok = np.ones(len(heads), bool) if pinned else (heads + size[self.atomic] <= self.quota[self.atomic]).all(axis=1)
        deficit = ((self.quota[self.atomic] - heads) / self.safe_quota).sum(axis=1)
        captions = (self.load[:, ~self.atomic] / self.safe_share).sum(axis=1)
        score = deficit - 1e-3 * captions - 1e-6 * self.attn / max(float(self.attn.max()), 1.0)
        cells = np.flatnonzero(ok)
        return cells[np.argsort(-score[cells], kind="stable")]

    def deal_round(self, cells: np.ndarray, length: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Item j (longest first) to cell cells[j], into its best-fitting sequence, where it fits; the
        sequence of each item (-1: did not fit)."""
        free = self.free[cells]
        fits = free >= length[:, None]
        seq = np.argmin(np.where(fits, free, np.iinfo(np.int64).max), axis=1)
        seq = np.where(fits.any(axis=1), seq, -1)
        ok = seq >= 0
        c, b = cells[ok], seq[ok]
        self.free[c, b] -= length[ok]
        self.load[c] += vector[ok]
        self.attn[c] += length[ok].astype(np.float64) ** 2
        return seq


def _classes(units: Units, atomic: np.ndarray):
    """Item ids grouped by (pinned, atomic content): pinned first, then the largest content, each group
    longest first, then stream order."""
    size = units.vector[:, atomic].sum(axis=1)
    order = np.lexsort((units.index, -units.length, -size, ~units.pinned))
    key = np.concatenate([units.pinned[order, None], units.vector[order][:, atomic]], axis=1)
    starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1)])
    return [order[a:b] for a, b in zip(starts, np.r_[starts[1:], len(order)])]


def plan_units(units: Units, quota: np.ndarray, atomic: np.ndarray, grid: CellGrid,
               split_share: np.ndarray) -> UnitPlan:
    """Deal the items to cells under `quota` (on copies of the grid's state); nothing is placed yet."""
    dealer = _Dealer(grid, quota, atomic, split_share)
    cell, seq = np.full(len(units), -1), np.full(len(units), -1)
    for todo in _classes(units, atomic):
        pinned, roomiest = bool(units.pinned[todo[0]]), False
        while len(todo):
            cells = dealer.ranked(units.vector[todo[0]], pinned)
            if roomiest:  # the best-ranked cells lacked room for these items: try the roomiest ones once
                cells = cells[np.argsort(-dealer.free[cells].max(axis=1), kind="stable")]
            n = min(len(cells), len(todo))
            got = dealer.deal_round(cells[:n], units.length[todo[:n]], units.vector[todo[:n]])
            ok = got >= 0
            cell[todo[:n][ok]], seq[todo[:n][ok]] = cells[:n][ok], got[ok]
            if ok.any():
                roomiest = False
            elif roomiest or not n:
                break
            else:
                roomiest = True
            todo = np.r_[todo[:n][~ok], todo[n:]]
    heads = dealer.load[:, atomic]
    return UnitPlan(quota, cell, seq, _imbalance(heads), int(units.length[cell >= 0].sum()),
                    int((heads.max(axis=0, initial=0) * len(heads) - heads.sum(axis=0)).sum()))


def _imbalance(load: np.ndarray) -> float:
    mean = load.mean(axis=0)
    used = mean > 0
    return float((load.max(axis=0)[used] / mean[used]).max()) if used.any() else 1.0


def plan_best(grid: CellGrid, units: Units, atomic: np.ndarray, split_share: np.ndarray) -> UnitPlan:
    """The most even of the candidate quotas' plans, then the one placing the most tokens (the first
    perfectly even one, largest quota first, ends the search: planning runs every step)."""
    if not len(units):
        return UnitPlan(np.zeros(len(atomic), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 1.0, 0, 0)
    plans = []
    for quota in candidate_quotas(supply_quota(units, atomic, grid), units, atomic, grid.n_cells):
        plans.append(plan_units(units, quota, atomic, grid, split_share))
        if plans[-1].imbalance <= 1 + 1e-9:
            break
    return min(plans, key=lambda p: (round(p.imbalance, 9), -p.placed_tokens))


def place_units(grid: CellGrid, pool: Pool, atomic: np.ndarray, max_deferrals: int,
                split_share: np.ndarray, refills: int = 3) -> UnitPlan:
    """Plan; while some cells fall short of the fullest, draw more atomic items (twice the shortfall)
    and plan again; then place the plan's items. These draws add at most REFILL_LIMIT batches to the
    pool (what they bring beyond the shortfall waits in the carry-over, so it must stay small)."""
    limit = pool.tokens + int(REFILL_LIMIT * grid.capacity)
    units = Units.of(pool, max_deferrals)
    plan = plan_best(grid, units, atomic, split_share)
    for _ in range(refills):
        if not plan.shortfall or not pool.draw_units(2 * plan.shortfall, limit):
            break
        units = Units.of(pool, max_deferrals)
        plan = plan_best(grid, units, atomic, split_share)
    ok = plan.cell >= 0
    ids = units.index[ok]
    grid.place(plan.cell[ok], plan.seq[ok], pool.pieces.take(ids), pool.vector[ids])
    pool.placed[ids] = True
    return plan
