"""Between a TP shard and the full (layout-independent) tensor, from the parameter's own tags.

Tags read: `tensor_model_parallel`, `partition_dim` (Megatron's) and `mot_blocks` (ours: the output
dim of a fused weight is several blocks each sharded over TP, e.g. [q; k; v] or [gate; up], so a rank
holds [q_r; k_r; v_r]). Used by the tests (compare sharded grads with a TP=1 reference) and by
checkpoint conversion/resharding.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..distributed import collectives as C
from .init import shard


def partition(param: torch.Tensor):
    """(dim, blocks) of a parameter; dim = -1 when it is replicated across TP."""
    if not getattr(param, "tensor_model_parallel", False):
        return -1, None
    return param.partition_dim, getattr(param, "mot_blocks", None)


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
    return torch.cat([shard(p, dim, rank, world) for p in pieces], dim=dim).contiguous()


def gather_full(tensor: torch.Tensor, param: torch.Tensor, tp_group) -> torch.Tensor:
    """All-gather `tensor` (a shard shaped like `param`: the param itself or its grad) into the full one."""
    dim, blocks = partition(param)
    world = C.group_size(tp_group)
    if dim < 0 or world == 1:
        return tensor
    gathered = C.all_gather_dim0(tensor.detach().movedim(dim, 0).contiguous(), tp_group)
    shards = [s.movedim(0, dim) for s in gathered.chunk(world, dim=0)]
    return join_shards(shards, dim, blocks)
