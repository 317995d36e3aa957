"""Plain (non-autograd) collectives over an explicit group; `group=None` means a single process.

Uneven dim-0 splits (`sizes`) are supported on every backend by padding to the largest piece:
gloo's all-gather needs equal sizes, and the padding costs at most one row per rank.
Every call runs inside a "mot/tp_comm" profiler scope (all of ours are tensor-parallel collectives;
data-parallel traffic is DeepSpeed's), so tools/profile_step.py can tell the two apart.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.profiler import record_function

TP_SCOPE = "mot/tp_comm"


# torch 2.13 renamed the tensor collectives; keep working on older torch (GPU clusters pin their own).
# Looked up per call (not bound at import) so tests can count calls by patching torch.distributed.
def _all_gather_flat(out, x, group):
    with record_function(TP_SCOPE):
        return (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, x, group=group)


def _reduce_scatter_flat(out, x, group):
    with record_function(TP_SCOPE):
        return (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(out, x, group=group)


class VirtualGroup:
    """A process group that exists only as (size, rank): modules built with it get this rank's shard
    shapes without any process group (dry runs on the meta device, planning). Collectives refuse it."""

    def __init__(self, size: int, rank: int):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} outside a group of {size}")
        self.size, self.rank = size, rank

    def __repr__(self) -> str:
        return f"VirtualGroup(size={self.size}, rank={self.rank})"


def group_size(group) -> int:
    if isinstance(group, VirtualGroup):
        return group.size
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    if isinstance(group, VirtualGroup):
        return group.rank
    return 0 if group is None else dist.get_rank(group)


def even_sizes(total: int, parts: int) -> List[int]:
    """Split `total` into `parts` sizes differing by at most one (the first ones larger)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In place on `x`; returns it."""
    if group_size(group) > 1:
        with record_function(TP_SCOPE):
            dist.all_reduce(x, op=op, group=group)
    return x


def all_gather_dim0(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0 (rank order). `sizes`: per-rank dim-0 sizes if uneven."""
    world = group_size(group)
    if world == 1:
        return x
    x = x.contiguous()
    if sizes is None or len(set(sizes)) == 1:
        out = x.new_empty((x.shape[0] * world,) + tuple(x.shape[1:]))
        _all_gather_flat(out, x, group=group)
        return out
    pad = max(sizes)
    padded = x.new_zeros((pad,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    out = x.new_empty((pad * world,) + tuple(x.shape[1:]))
    _all_gather_flat(out, padded, group=group)
    return torch.cat([out[r * pad: r * pad + s] for r, s in enumerate(sizes)])


def reduce_scatter_dim0(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Sum `x` over ranks and keep this rank's dim-0 piece (sizes as in all_gather_dim0)."""
    world = group_size(group)
    if world == 1:
        return x
    x = x.contiguous()
    if sizes is None or len(set(sizes)) == 1:
        if x.shape[0] % world:
            raise ValueError(f"reduce-scatter of dim 0 = {x.shape[0]} over {world} ranks needs `sizes`")
        out = x.new_empty((x.shape[0] // world,) + tuple(x.shape[1:]))
        _reduce_scatter_flat(out, x, group=group)
        return out
    pad = max(sizes)
    padded = x.new_zeros((pad * world,) + tuple(x.shape[1:]))
    offset = 0
    for r, s in enumerate(sizes):
        padded[r * pad: r * pad + s] = x[offset: offset + s]
        offset += s
    out = x.new_empty((pad,) + tuple(x.shape[1:]))
    _reduce_scatter_flat(out, padded, group=group)
    return out[: sizes[group_rank(group)]]


def all_gather_last_dim(x: torch.Tensor, group) -> torch.Tensor:
    world = group_size(group)
    if world == 1:
        return x
    gathered = all_gather_dim0(x.movedim(-1, 0), group)  # [world * d, ...]
    return gathered.movedim(0, -1).contiguous()


def split_dim(x: torch.Tensor, group, dim: int, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """This rank's piece of `x` along `dim` (no communication)."""
    world = group_size(group)
    if world == 1:
        return x
    sizes = list(sizes) if sizes is not None else None
    if sizes is None:
        if x.shape[dim] % world:
            raise ValueError(f"cannot split dim {dim} of size {x.shape[dim]} evenly over {world} ranks")
        sizes = [x.shape[dim] // world] * world
    rank = group_rank(group)
    return x.narrow(dim, sum(sizes[:rank]), sizes[rank]).contiguous()
