"""`ParallelLayout`: the one description of how a run is split over processes (torchtitan's ParallelDims).

Derived once from the config and the launched world (`ParallelLayout.from_config`), then passed to
everything that needs it: the topology builds its process groups from it, the planner evaluates and
searches candidates of the same type, the dry run builds rank R's model from it. Pure arithmetic, no
processes: world = tp * pp * dp; global batch = micro_batch_size * dp * grad_accum.

Rank order is Megatron's and DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model):
TP varies fastest, then DP, then PP:  rank = (pp * dp_size + dp) * tp_size + tp, so TP peers are
neighbours on one node (NVLink) and the DP peers of a stage are spread across nodes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, NamedTuple


def effective_sequence_parallel(requested: bool, tp_size: int) -> bool:
    """Whether sequence parallelism is on: it lives inside the TP group, so it is a no-op at TP = 1. The one
    place this is decided (ParallelLayout here, ParallelContext for modules, the planner through the layout)."""
    return bool(requested) and tp_size > 1


class Coord(NamedTuple):
    pp: int
    dp: int
    tp: int


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch_size: int = 1
    grad_accum: int = 1
    zero_stage: int = 1
    sequence_parallel: bool = False          # effective: requested and tp > 1
    activation_checkpointing: bool = False

    def __post_init__(self):
        for name in ("tp", "pp", "dp", "micro_batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"ParallelLayout.{name}={getattr(self, name)} must be >= 1")
        object.__setattr__(self, "sequence_parallel", effective_sequence_parallel(self.sequence_parallel, self.tp))

    @classmethod
    def from_config(cls, cfg, world_size: int) -> "ParallelLayout":
        """TP/PP from the config, DP from the world size, accumulation from the global batch. The config
        must have passed validation (config/validate.py checks divisibility with clear messages)."""
        p, t = cfg.parallel, cfg.train
        dp = world_size // (p.tensor_parallel * p.pipeline_parallel)
        gbs = t.global_batch_size if t.global_batch_size is not None else t.micro_batch_size * dp
        return cls(p.tensor_parallel, p.pipeline_parallel, dp, t.micro_batch_size,
                   gbs // (t.micro_batch_size * dp), p.zero_stage, p.sequence_parallel,
                   t.activation_checkpointing)

    def with_(self, **changes) -> "ParallelLayout":
        return dataclasses.replace(self, **changes)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.dp * self.grad_accum

    # ranks and groups ------------------------------------------------------------------------------------
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

    def describe(self) -> str:
        return (f"TP{self.tp}{'+SP' if self.sequence_parallel else ''} PP{self.pp} DP{self.dp} "
                f"ZeRO-{self.zero_stage} mb{self.micro_batch_size}x{self.grad_accum}"
                f"{' recompute' if self.activation_checkpointing else ''}")
