"""The parallel topology: one object holding the TP, PP, DP and model-parallel (TP x PP) groups.

Rank order is Megatron's and DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model):
TP varies fastest, then DP, then PP:  rank = (pp * dp_size + dp) * tp_size + tp.
So TP peers are neighbours on one node (NVLink), and DP peers of a stage are spread across nodes.

The topology is passed explicitly to every layer and engine; nothing here is a module-level global.
A group is `None` only when torch.distributed is not initialised (one process, nothing to talk to).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import torch.distributed as dist


class Coord(NamedTuple):
    pp: int
    dp: int
    tp: int


@dataclass(frozen=True)
class Dims:
    """Sizes of the three axes; pure arithmetic, no processes needed."""
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def coords(self, rank: int) -> Coord:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of size {self.world_size}")
        return Coord(rank // (self.dp * self.tp), (rank // self.tp) % self.dp, rank % self.tp)

    def rank_of(self, pp: int, dp: int, tp: int) -> int:
        return (pp * self.dp + dp) * self.tp + tp

    def tp_groups(self) -> List[List[int]]:
        return [[self.rank_of(p, d, t) for t in range(self.tp)] for p in range(self.pp) for d in range(self.dp)]

    def dp_groups(self) -> List[List[int]]:
        return [[self.rank_of(p, d, t) for d in range(self.dp)] for p in range(self.pp) for t in range(self.tp)]

    def pp_groups(self) -> List[List[int]]:
        return [[self.rank_of(p, d, t) for p in range(self.pp)] for d in range(self.dp) for t in range(self.tp)]

    def mp_groups(self) -> List[List[int]]:
        """Model-parallel groups: all TP x PP ranks holding one copy of the model."""
        return [sorted(self.rank_of(p, d, t) for p in range(self.pp) for t in range(self.tp)) for d in range(self.dp)]


def _mine(groups: List[List[int]], rank: int) -> List[int]:
    return next(g for g in groups if rank in g)


class ParallelTopology:
    """Groups and coordinates of this rank. Build with `ParallelTopology.build(dims)` on every rank."""

    def __init__(self, dims: Dims, rank: int, tp_group=None, pp_group=None, dp_group=None, mp_group=None):
        self.dims, self.rank = dims, rank
        self.coord = dims.coords(rank)
        self.tp_group, self.pp_group, self.dp_group, self.mp_group = tp_group, pp_group, dp_group, mp_group
        self.tp_ranks = _mine(dims.tp_groups(), rank)
        self.pp_ranks = _mine(dims.pp_groups(), rank)
        self.dp_ranks = _mine(dims.dp_groups(), rank)
        self.mp_ranks = _mine(dims.mp_groups(), rank)

    @classmethod
    def build(cls, dims: Dims, rank: Optional[int] = None) -> "ParallelTopology":
        """Create every group (a collective call: all ranks must call it, in the same order)."""
        if not (dist.is_available() and dist.is_initialized()):
            if dims.world_size != 1:
                raise RuntimeError(f"layout {dims} needs {dims.world_size} processes but torch.distributed "
                                   "is not initialised (see mot_parallel.distributed.init_distributed)")
            return cls(dims, 0)
        if dist.get_world_size() != dims.world_size:
            raise ValueError(f"layout tp={dims.tp} pp={dims.pp} dp={dims.dp} needs world size {dims.world_size}, "
                             f"got {dist.get_world_size()}")
        rank = dist.get_rank() if rank is None else rank
        mine = {}
        for name, groups in (("tp", dims.tp_groups()), ("pp", dims.pp_groups()), ("dp", dims.dp_groups()),
                             ("mp", dims.mp_groups())):
            for ranks in groups:
                group = dist.new_group(ranks)
                if rank in ranks:
                    mine[name] = group
        return cls(dims, rank, mine["tp"], mine["pp"], mine["dp"], mine["mp"])

    @classmethod
    def from_megatron(cls, parallel_state=None) -> "ParallelTopology":
        """Wrap the groups Megatron-Core's `parallel_state` already created (layers inside Megatron code)."""
        if parallel_state is None:
            from megatron.core import parallel_state
        ps = parallel_state
        dims = Dims(ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
                    ps.get_data_parallel_world_size())
        topo = cls(dims, dist.get_rank(), ps.get_tensor_model_parallel_group(),
                   ps.get_pipeline_model_parallel_group(), ps.get_data_parallel_group(),
                   ps.get_model_parallel_group())
        expected = Coord(ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank(),
                         ps.get_tensor_model_parallel_rank())
        if topo.coord != expected:
            raise ValueError(f"Megatron's rank order {expected} differs from tp-dp-pp order {topo.coord}; "
                             "initialise Megatron with order='tp-cp-ep-dp-pp' and no context/expert parallelism")
        return topo

    # coordinates --------------------------------------------------------------------------------------------
    tp_rank = property(lambda self: self.coord.tp)
    pp_rank = property(lambda self: self.coord.pp)
    dp_rank = property(lambda self: self.coord.dp)
    tp_size = property(lambda self: self.dims.tp)
    pp_size = property(lambda self: self.dims.pp)
    dp_size = property(lambda self: self.dims.dp)
    is_first_stage = property(lambda self: self.coord.pp == 0)
    is_last_stage = property(lambda self: self.coord.pp == self.dims.pp - 1)

    def mpu(self):
        """DeepSpeed's duck-typed `mpu` view of this topology (see mpu.py)."""
        from .mpu import DeepSpeedMPU
        return DeepSpeedMPU(self)

    def __repr__(self) -> str:
        d = self.dims
        return f"ParallelTopology(rank={self.rank}, tp={d.tp}, pp={d.pp}, dp={d.dp}, coord={tuple(self.coord)})"
