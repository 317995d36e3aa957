"""`ParallelContext`: how this process's share of the model is split, decided once and handed to every module.

Modules and the routing plan read the TP group, its size and rank, and whether sequence parallelism is on
from here; none of them combines the sequence-parallel request with the TP size itself (that decision is
config/parallel_layout.py `effective_sequence_parallel`, applied when the context is built). Built by the topology
for a run (`ParallelTopology.context()`), by the Megatron plug-in from the process groups Megatron hands a
layer (megatron/layer.py), by the dry run from a virtual group, and as `ParallelContext()` for one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config.parallel_layout import effective_sequence_parallel
from .collectives import group_rank, group_size


@dataclass(frozen=True)
class ParallelContext:
    tp_group: Optional[Any] = None    # None: a TP group of one rank (nothing to talk to)
    sequence_parallel: bool = False   # effective: requested and tp_size > 1
    tp_size: int = 1
    tp_rank: int = 0
    pp_rank: int = 0
    pp_size: int = 1
    dp_group: Optional[Any] = None

    @classmethod
    def of(cls, tp_group=None, sequence_parallel: bool = False, *, pp_rank: int = 0, pp_size: int = 1,
           dp_group=None) -> "ParallelContext":
        """The context of a process whose TP group is `tp_group` (a process group, a VirtualGroup, or None),
        with sequence parallelism requested or not."""
        tp = group_size(tp_group)
        return cls(tp_group, effective_sequence_parallel(sequence_parallel, tp), tp, group_rank(tp_group),
                   pp_rank, pp_size, dp_group)

    def describe(self) -> str:
        return f"TP{self.tp_size}{'+SP' if self.sequence_parallel else ''} rank {self.tp_rank}, stage {self.pp_rank}"


SINGLE_PROCESS = ParallelContext()
