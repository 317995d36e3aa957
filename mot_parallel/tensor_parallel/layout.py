"""Between a TP shard and the full (layout-independent) tensor: the one way tensors are sharded.

A fused dimension holds several blocks each sharded over TP (e.g. [q; k; v] or [gate; up]), so a rank
holds [q_r; k_r; v_r]. Used to initialise weights (weight_init.py), by checkpoint conversion/resharding,
and by the tests (compare sharded grads with a TP=1 reference); a parameter's partition comes from its
typed metadata (param_meta.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..distributed import collectives as C
from .param_meta import tp_partition


def join_shards(shards: Sequence[torch.Tensor], dim: int, blocks: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Full tensor from the per-rank shards (rank order)."""
    if dim < 0 or len(shards) == 1:
        return shards[0]
    if not blocks:
        return torch.cat(list(shards), dim=dim)
    world = len(shards)
    local = [b // world for b in blocks]
    per_rank = [s.split(local, dim=dim) for s in shards]
    return torch.cat([torch.cat([per_rank[r][b] for r in range(world)], dim=dim) for b in range(len(blocks))], dim=dim)


def split_full(full: torch.Tensor, dim: int, rank: int, world: int,
               blocks: Optional[Sequence[int]] = None) -> torch.Tensor:
    """This rank's shard of the full tensor (inverse of join_shards)."""
    if dim < 0 or world == 1:
        return full
    pieces = full.split(list(blocks), dim=dim) if blocks else [full]
    for p in pieces:
        if p.shape[dim] % world:
            raise ValueError(f"dim {dim} of size {p.shape[dim]} does not split into {world} shards")
    return torch.cat([p.chunk(world, dim=dim)[rank] for p in pieces], dim=dim).contiguous()


def gather_full(tensor: torch.Tensor, param: torch.Tensor, tp_group) -> torch.Tensor:
    """All-gather `tensor` (a shard shaped like `param`: the param itself or its grad) into the full one."""
    dim, blocks = tp_partition(param)
    world = C.group_size(tp_group)
    if dim < 0 or world == 1:
        return tensor
    gathered = C.all_gather_dim0(tensor.detach().movedim(dim, 0).contiguous(), tp_group)
    shards = [s.movedim(0, dim) for s in gathered.chunk(world, dim=0)]
    return join_shards(shards, dim, blocks)
