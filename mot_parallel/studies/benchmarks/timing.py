"""Interleaved timing: every variant runs once per round, so machine drift hits all of them alike and
ratios measured in one run are comparable. Reports the median over rounds."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict

import torch

from ...distributed import device as dev


def time_interleaved(fns: Dict[str, Callable[[], None]], rounds: int = 5, warmup: int = 1,
                     device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """Median milliseconds per call of each function."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            dev.synchronize(device)
            t = time.perf_counter()
            fn()
            dev.synchronize(device)
            samples[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}
