"""Initialisation that does not depend on the TP size: draw the full weight, keep this rank's shard.

The full tensor is drawn on the CPU in fp32 from a private generator seeded per parameter
(`param_seed(seed, name)`), so a TP=2 shard is exactly a slice of the TP=1 weight, PP stages draw the
same numbers as a single process, and CPU and GPU runs start from identical weights.
`init_method(tensor)` follows Megatron's convention (in-place on a tensor), so Megatron's own
init methods work here too.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from .layout import split_full

InitMethod = Callable[[torch.Tensor], torch.Tensor]


class SeededInit(NamedTuple):
    """How a parameter is drawn: Megatron's in-place `method`, from a private generator seeded `seed`
    (None: the global CPU RNG, as Megatron does)."""
    method: InitMethod
    seed: Optional[int] = None


def normal_init(std: float) -> InitMethod:
    return lambda t: torch.nn.init.normal_(t, mean=0.0, std=std)


def scaled_normal_init(std: float, num_layers: int) -> InitMethod:
    """Output projections (W_O, FFN down): std / sqrt(2 * layers), GPT-2 / Megatron."""
    return normal_init(std / math.sqrt(2.0 * num_layers))


def param_seed(seed: int, name: str) -> int:
    """A stable per-parameter seed (Python's hash() is salted per process; crc32 is not)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def draw_full(shape: Sequence[int], init_method: InitMethod, seed: Optional[int]) -> torch.Tensor:
    """The unsharded tensor in fp32 on CPU; a private RNG when `seed` is given, else the global CPU RNG."""
    full = torch.empty(tuple(shape), dtype=torch.float32)
    if seed is None:
        init_method(full)
        return full
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init_method(full)
    return full


@torch.no_grad()
def init_sharded_(param: torch.Tensor, init_method: InitMethod, full_shape: Sequence[int], partition_dim: int,
                  tp_rank: int, tp_size: int, seed: Optional[int] = None,
                  blocks: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Fill `param` with its shard of a freshly drawn full tensor (no-op on the meta device); `blocks`
    splits a fused dimension into blocks that are each sharded (tensor_parallel/layout.py)."""
    if param.device.type == "meta":
        return param
    full = draw_full(full_shape, init_method, seed)
    param.copy_(split_full(full, partition_dim, tp_rank, tp_size, blocks))
    return param
