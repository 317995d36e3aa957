"""The stage's DeepSpeed PipelineModule (kept apart from pipeline.py so that importing the training loop
does not import DeepSpeed: only a pipeline run builds one)."""
from __future__ import annotations

from typing import Callable, Tuple

from deepspeed.pipe import LayerSpec, PipelineModule
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from torch import nn

from ..config.parallel_layout import ParallelLayout
from ..distributed.parallel_context import ParallelContext
from ..model.settings import ModelSettings
from .pipeline import EmbeddingPipe, HeadPipe, MoTLayerPipe, PipeLoss, enter, leave


class MoTPipelineModule(PipelineModule):
    """DeepSpeed's PipelineModule with the stage's entry and exit in one place (`enter` / `leave`)."""

    def __init__(self, settings: ModelSettings, parallel: ParallelContext, **pipeline_kwargs):
        super().__init__(**pipeline_kwargs)
        self.settings, self.parallel = settings, parallel

    def forward(self, forward_input):
        return leave(super().forward(enter(forward_input, self.settings, self.parallel)), self.settings)



def build_pipeline_module(settings: ModelSettings, topo, layout: ParallelLayout, rng_tracker,
                          checkpoint_fn: Callable) -> Tuple[nn.Module, PipeLoss]:
    """The stage's PipelineModule and its loss function (DeepSpeed builds only this stage's layers)."""
    parallel = topo.context()
    specs = [LayerSpec(EmbeddingPipe, settings, parallel)]
    specs += [LayerSpec(MoTLayerPipe, settings, i, parallel, rng_tracker) for i in range(settings.num_layers)]
    specs += [LayerSpec(HeadPipe, settings, parallel)]
    grid = PipeModelDataParallelTopology(num_pp=topo.pp_size, num_mp=topo.tp_size, num_dp=topo.dp_size)
    loss = PipeLoss(settings, parallel, scale=layout.dp * layout.grad_accum)
    module = MoTPipelineModule(settings, parallel, layers=specs, topology=grid, loss_fn=loss,
                               partition_method="type:MoTLayerPipe",
                               activation_checkpoint_interval=1 if layout.activation_checkpointing else 0,
                               activation_checkpoint_func=checkpoint_fn, checkpointable_layers=["MoTLayerPipe"])
    return module, loss
