"""The parallel topology: one object holding the TP, PP, DP and model-parallel (TP x PP) groups of a
`ParallelLayout` (config/parallel_layout.py: sizes, rank order and group membership, pure arithmetic).

The topology is passed explicitly to every layer and engine; nothing here is a module-level global.
A group is `None` only when torch.distributed is not initialised (one process, nothing to talk to).
"""
from __future__ import annotations

from typing import List, Optional

import torch.distributed as dist

from ..config.parallel_layout import ParallelLayout
from .mpu import DeepSpeedMPU
from .parallel_context import ParallelContext


def _mine(groups: List[List[int]], rank: int) -> List[int]:
    return next(g for g in groups if rank in g)


class ParallelTopology:
    """Groups and coordinates of this rank. Build with `ParallelTopology.build(layout)` on every rank."""

    def __init__(self, layout: ParallelLayout, rank: int, tp_group=None, pp_group=None, dp_group=None, mp_group=None):
        self.layout, self.rank = layout, rank
        self.coord = layout.coords(rank)
        self.tp_group, self.pp_group, self.dp_group, self.mp_group = tp_group, pp_group, dp_group, mp_group
        self.tp_ranks = _mine(layout.tp_groups(), rank)
        self.pp_ranks = _mine(layout.pp_groups(), rank)
        self.dp_ranks = _mine(layout.dp_groups(), rank)
        self.mp_ranks = _mine(layout.mp_groups(), rank)
        self._context = ParallelContext.of(tp_group, layout.sequence_parallel, pp_rank=self.coord.pp,
                                           pp_size=layout.pp, dp_group=dp_group)

    @classmethod
    def build(cls, layout: ParallelLayout, rank: Optional[int] = None) -> "ParallelTopology":
        """Create every group (a collective call: all ranks must call it, in the same order)."""
        if not (dist.is_available() and dist.is_initialized()):
            if layout.world_size != 1:
                raise RuntimeError(f"layout {layout.describe()} needs {layout.world_size} processes but "
                                   "torch.distributed is not initialised (see mot_parallel.distributed.init_distributed)")
            return cls(layout, 0)
        if dist.get_world_size() != layout.world_size:
            raise ValueError(f"layout tp={layout.tp} pp={layout.pp} dp={layout.dp} needs world size "
                             f"{layout.world_size}, got {dist.get_world_size()}")
        rank = dist.get_rank() if rank is None else rank
        mine = {}
        for name, groups in (("tp", layout.tp_groups()), ("pp", layout.pp_groups()), ("dp", layout.dp_groups()),
                             ("mp", layout.mp_groups())):
            for ranks in groups:
                group = dist.new_group(ranks)
                if rank in ranks:
                    mine[name] = group
        return cls(layout, rank, mine["tp"], mine["pp"], mine["dp"], mine["mp"])

    @classmethod
    def from_megatron(cls, parallel_state=None) -> "ParallelTopology":
        """Wrap the groups Megatron-Core's `parallel_state` already created (layers inside Megatron code)."""
        if parallel_state is None:
            from megatron.core import parallel_state
        ps = parallel_state
        layout = ParallelLayout(ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
                                ps.get_data_parallel_world_size())
        topo = cls(layout, dist.get_rank(), ps.get_tensor_model_parallel_group(),
                   ps.get_pipeline_model_parallel_group(), ps.get_data_parallel_group(),
                   ps.get_model_parallel_group())
        expected = (ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank(),
                         ps.get_tensor_model_parallel_rank())
        if tuple(topo.coord) != expected:
            raise ValueError(f"Megatron's rank order {expected} differs from tp-dp-pp order {topo.coord}; "
                             "initialise Megatron with order='tp-cp-ep-dp-pp' and no context/expert parallelism")
        return topo

    # coordinates --------------------------------------------------------------------------------------------
    tp_rank = property(lambda self: self.coord.tp)
    pp_rank = property(lambda self: self.coord.pp)
    dp_rank = property(lambda self: self.coord.dp)
    tp_size = property(lambda self: self.layout.tp)
    pp_size = property(lambda self: self.layout.pp)
    dp_size = property(lambda self: self.layout.dp)
    is_first_stage = property(lambda self: self.coord.pp == 0)
    is_last_stage = property(lambda self: self.coord.pp == self.layout.pp - 1)

    def context(self) -> ParallelContext:
        """What this rank's modules need to know about the split (model/, training/pipeline.py): one object,
        built with the topology (the loader thread plans every micro-batch with it)."""
        return self._context

    def mpu(self):
        """DeepSpeed's duck-typed `mpu` view of this topology (see mpu.py)."""
        return DeepSpeedMPU(self)

    def __repr__(self) -> str:
        d = self.layout
        return f"ParallelTopology(rank={self.rank}, tp={d.tp}, pp={d.pp}, dp={d.dp}, coord={tuple(self.coord)})"
