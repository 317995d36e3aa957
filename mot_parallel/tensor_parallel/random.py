"""Named RNG streams for dropout inside TP regions (Megatron's RNG tracker, on CPU and GPU).

Activations inside a TP region are *different* on each TP rank (different heads / FFN columns), so
their dropout must use a stream seeded per TP rank; activations outside (replicated, or SP shards that
must match a TP=1 run) use the default stream, seeded identically on every TP rank.
`fork(name)` swaps a stream in and out without disturbing the default one. Pass the tracker
explicitly; `get_states`/`set_states` go into checkpoints and activation recompute.
"""
from __future__ import annotations

import contextlib
from typing import Dict

import torch

from ..distributed import device as dev

TP_STREAM = "model-parallel-rng"


class RNGStatesTracker:
    def __init__(self, device: torch.device = torch.device("cpu")):
        self.device = device
        self.states: Dict[str, torch.Tensor] = {}

    def add(self, name: str, seed: int) -> None:
        if name in self.states:
            raise ValueError(f"RNG stream {name!r} already exists")
        saved = dev.get_rng_state(self.device)
        dev.manual_seed(seed, self.device)
        self.states[name] = dev.get_rng_state(self.device)
        dev.set_rng_state(saved, self.device)

    @contextlib.contextmanager
    def fork(self, name: str = TP_STREAM):
        if name not in self.states:
            raise KeyError(f"RNG stream {name!r} was never added (have {list(self.states)})")
        saved = dev.get_rng_state(self.device)
        dev.set_rng_state(self.states[name], self.device)
        try:
            yield
        finally:
            self.states[name] = dev.get_rng_state(self.device)
            dev.set_rng_state(saved, self.device)

    def get_states(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states.items()}

    def set_states(self, states: Dict[str, torch.Tensor]) -> None:
        self.states = {k: v.clone() for k, v in states.items()}


def model_parallel_seeds(seed: int, tp_rank: int, pp_rank: int) -> tuple[int, int]:
    """(default-stream seed, TP-stream seed). Default: equal across TP and DP (so SP/TP runs match TP=1),
    distinct per PP stage; TP stream: distinct per TP rank (Megatron's +2718 offset)."""
    default = seed + 100 * pp_rank
    return default, default + 2718 + tp_rank


def make_tracker(seed: int, tp_rank: int, pp_rank: int, device: torch.device) -> RNGStatesTracker:
    """Seed the default stream and return a tracker holding the TP stream."""
    default, tp_seed = model_parallel_seeds(seed, tp_rank, pp_rank)
    dev.manual_seed(default, device)
    tracker = RNGStatesTracker(device)
    tracker.add(TP_STREAM, tp_seed)
    return tracker
