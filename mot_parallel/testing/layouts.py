"""The (tp, pp, dp) layouts a test can be parametrized over, e.g. every layout of at most 4 processes."""
from __future__ import annotations

from typing import Iterable, List, Optional

from ..config.parallel_layout import ParallelLayout


def layouts(max_world: int = 4, tp: Optional[Iterable[int]] = None, pp: Optional[Iterable[int]] = None,
            dp: Optional[Iterable[int]] = None, min_world: int = 1) -> List[ParallelLayout]:
    """All layouts with power-of-two axes whose product lies in [min_world, max_world] (optionally restricted)."""
    sizes = [s for s in (1, 2, 4, 8) if s <= max_world]
    out = []
    for p in (pp or sizes):
        for d in (dp or sizes):
            for t in (tp or sizes):
                if min_world <= t * p * d <= max_world:
                    out.append(ParallelLayout(t, p, d))
    return out


def layout_id(d: ParallelLayout) -> str:
    return f"tp{d.tp}-pp{d.pp}-dp{d.dp}"
