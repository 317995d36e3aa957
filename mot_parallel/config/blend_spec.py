"""Parsing `data.path` / `data.valid_path`: a corpus prefix, or a blend of weighted prefixes (Megatron's
habit: `"0.3 /data/text 0.7 /data/captions"`). Pure: the config validation and the data package both read it."""
from __future__ import annotations

import math
from typing import List, Tuple


def parse_blend(value, key: str) -> List[Tuple[float, str]]:
    """`prefix`, `"w1 p1 w2 p2 ..."` or `[w1, p1, w2, p2, ...]` -> [(weight, prefix)], weights summing to 1.
    Raises ValueError naming `key`."""
    items = value.split() if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if items is None:
        raise ValueError(f"{key}: expected a corpus prefix or a blend 'weight prefix weight prefix ...', got {value!r}")
    if not items:
        raise ValueError(f"{key} is empty; give a corpus prefix (<prefix>.bin/.idx), a blend 'weight prefix "
                         f"weight prefix ...', or {'demo for the demo corpus' if key == 'data.path' else 'null'}")
    if len(items) == 1:
        return [(1.0, str(items[0]))]
    if len(items) % 2:
        raise ValueError(f"{key}: a blend alternates weights and prefixes (Megatron's 'w1 p1 w2 p2'); got "
                         f"{len(items)} items: {value!r}")
    pairs = []
    for w, p in zip(items[::2], items[1::2]):
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: {w!r} is not a weight (a blend alternates weights and prefixes)") from None
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"{key}: weight {w!r} of {p!r} must be a positive finite number")
        pairs.append((weight, str(p)))
    top = max(w for w, _ in pairs)
    scale = 1.0 if math.isfinite(sum(w for w, _ in pairs)) else top  # weights near the float range overflow it
    total = sum(w / scale for w, _ in pairs)
    out = [(w / scale / total, p) for w, p in pairs]
    for (w, p), (share, _) in zip(pairs, out):
        if share == 0:  # underflow: the source would silently never be drawn
            raise ValueError(f"{key}: weight {w!r} of {p!r} is too small next to {top!r} to ever be drawn "
                             "(its share underflows to 0); raise it or leave the source out")
    return out
