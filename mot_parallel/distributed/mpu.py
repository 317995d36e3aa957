"""DeepSpeed's duck-typed `mpu` over a `ParallelTopology` (for `deepspeed.initialize(mpu=...)` without PP).

"Model parallel" means TP x PP, as in DeepSpeed's own `PipelineParallelGrid` (grad-norm and overflow
reductions run over it; replicated params are counted on model-parallel rank 0 only).
Deliberately absent: `get_sequence_parallel_*` / `initialize_sequence_parallel`. DeepSpeed reads their
presence as *Ulysses* sequence parallelism and would re-partition our data; Megatron-style SP lives
inside the TP group and DeepSpeed must not know about it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List

if TYPE_CHECKING:  # only the annotation: topology.py builds this view, so importing it here would be a circle
    from .topology import ParallelTopology


class DeepSpeedMPU:
    def __init__(self, topology: ParallelTopology):
        self.topo = topology

    # model parallel = TP x PP ------------------------------------------------------------------------------
    def get_model_parallel_rank(self) -> int:
        return self.topo.mp_ranks.index(self.topo.rank)

    def get_model_parallel_world_size(self) -> int:
        return len(self.topo.mp_ranks)

    def get_model_parallel_group(self):
        return self.topo.mp_group

    # data parallel -----------------------------------------------------------------------------------------
    def get_data_parallel_rank(self) -> int:
        return self.topo.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.topo.dp_size

    def get_data_parallel_group(self):
        return self.topo.dp_group

    def get_data_parallel_group_ranks(self) -> List[int]:
        return list(self.topo.dp_ranks)

    # tensor parallel (DeepSpeed also calls it "slice" parallel) --------------------------------------------
    def get_tensor_model_parallel_rank(self) -> int:
        return self.topo.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self.topo.tp_size

    def get_tensor_model_parallel_group(self):
        return self.topo.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        return self.topo.tp_ranks[0]

    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    # pipeline ----------------------------------------------------------------------------------------------
    def get_pipeline_model_parallel_rank(self) -> int:
        return self.topo.pp_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return self.topo.pp_size

    def get_pipeline_model_parallel_group(self):
        return self.topo.pp_group

    get_pipe_parallel_rank = get_pipeline_model_parallel_rank
    get_pipe_parallel_world_size = get_pipeline_model_parallel_world_size
    get_pipe_parallel_group = get_pipeline_model_parallel_group
