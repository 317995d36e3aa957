"""Pipeline parallelism on DeepSpeed's PipelineModule: embedding, MoT layers, head as LayerSpecs.

DeepSpeed feeds inputs only to the first stage and labels only to the last, and stages exchange one
tuple of tensors, so the routing plan travels *in* the activation tuple, by DeepSpeed's rules (fixed
shapes, integer tensors passed through, no None):

    (hidden [s(/tp), b, h],) + RoutingPlan.to_tensors()      (see model/routing.py)

Each stage turns those tensors back into the host-side plan once per micro-batch (`StagePlans`: one
small device->host read when a micro-batch enters the stage; the layers never synchronise). Modules of
a stage pass the plan tensors through unchanged, and activation recompute runs a layer on detached
views of them, so the stage finds a micro-batch's plan again by the storage of its `perm` tensor; no
state is attached to any tensor.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from ..config.layout import ParallelLayout
from ..distributed.collectives import group_rank, group_size
from ..model.layer import MoTLayer
from ..model.model import MoTEmbedding, MoTHead, modality_loss
from ..model.rope import rope_cos_sin
from ..model.routing import RoutingPlan
from ..model.settings import ModelSettings


def stage_inputs(tokens: torch.Tensor, plan: RoutingPlan) -> Tuple[torch.Tensor, ...]:
    """The first stage's input tuple for one micro-batch: tokens + the plan as tensors."""
    return (tokens,) + plan.to_tensors(tokens.device)


class StagePlans:
    """The host-side plans (and RoPE tables) of the micro-batches in flight on this stage, found by the
    storage of the tuple's `perm` tensor. An entry lives exactly as long as the first tensor it was read
    from (a weak reference), so a later micro-batch reusing freed memory can never hit a stale plan."""

    def __init__(self, settings: ModelSettings, tp_group):
        self.settings, self.tp_size, self.tp_rank = settings, group_size(tp_group), group_rank(tp_group)
        self._entries: Dict[int, Tuple[weakref.ref, RoutingPlan, tuple]] = {}

    def __call__(self, inputs: Tuple[torch.Tensor, ...]) -> Tuple[RoutingPlan, tuple]:
        perm = inputs[1]
        key = perm.untyped_storage().data_ptr()
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is not None:
            return entry[1], entry[2]
        plan = RoutingPlan.from_tensors(inputs[1:], self.tp_size, self.tp_rank)
        s = self.settings
        rope = rope_cos_sin(plan.position_ids, plan.seq_len, plan.batch, s.head_dim, s.rope_theta, perm.device,
                            s.rope_scaling)
        self._entries[key] = (weakref.ref(perm, lambda _, k=key: self._entries.pop(k, None)), plan, rope)
        return plan, rope


class _StageIO:
    """Mixin for stage modules: the plan comes from the activation tuple and the module's result replaces
    the hidden states in it; subclasses set `plans` (the stage's StagePlans) and define
    `run(hidden, plan, rope)`."""

    def forward(self, inputs):
        plan, rope = self.plans(inputs)
        return (self.run(inputs[0], plan, rope),) + tuple(inputs[1:])


class EmbeddingPipe(_StageIO, MoTEmbedding):
    def __init__(self, settings: ModelSettings, tp_group, plans: StagePlans):
        super().__init__(settings, tp_group)
        self.plans = plans

    def run(self, tokens, plan, rope):
        return MoTEmbedding.forward(self, tokens, plan)


class MoTLayerPipe(_StageIO, MoTLayer):
    def __init__(self, settings: ModelSettings, layer_number: int, tp_group, rng_tracker, plans: StagePlans):
        super().__init__(settings, layer_number, tp_group, rng_tracker)
        self.plans = plans

    def run(self, hidden, plan, rope):
        return MoTLayer.forward(self, hidden, plan, rope)


class HeadPipe(_StageIO, MoTHead):
    """Final norm + vocab-parallel logits; the loss is PipeLoss (DeepSpeed's loss_fn, last stage)."""

    def __init__(self, settings: ModelSettings, tp_group, plans: StagePlans):
        super().__init__(settings, tp_group)
        self.plans = plans

    def run(self, hidden, plan, rope):
        return MoTHead.forward(self, hidden, plan)


class PipeLoss:
    """loss_fn(outputs, labels) on the last stage. Returns the micro-batch's share of the global-mean
    loss, pre-multiplied by `scale` = DP x accumulation so that DeepSpeed's 1/accumulation and 1/DP
    averaging cancel; keeps per-modality sums for logging.
    labels = (labels [s, b], label modalities [s, b], global loss-token count [M])."""

    def __init__(self, settings: ModelSettings, tp_group, plans: StagePlans, scale: float):
        self.settings, self.tp_group, self.plans, self.scale = settings, tp_group, plans, float(scale)
        self.loss_sum = self.count = None

    def __call__(self, outputs, labels):
        plan, _ = self.plans(outputs)
        out = modality_loss(outputs[0], plan, labels[0], labels[1], None, self.tp_group, self.settings)
        if self.loss_sum is None:
            self.loss_sum, self.count = out.loss_sum.detach().clone(), out.token_count.clone()
        else:
            self.loss_sum += out.loss_sum.detach()
            self.count += out.token_count
        return out.loss_sum.sum() * (self.scale / labels[2].sum())

    def pop(self):
        out, self.loss_sum, self.count = (self.loss_sum, self.count), None, None
        return out


def build_pipeline_module(settings: ModelSettings, topo, layout: ParallelLayout, rng_tracker,
                          checkpoint_fn: Callable) -> Tuple[nn.Module, PipeLoss]:
    """The stage's PipelineModule and its loss function (DeepSpeed builds only this stage's layers)."""
    from deepspeed.pipe import LayerSpec, PipelineModule
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    plans = StagePlans(settings, topo.tp_group)
    specs = [LayerSpec(EmbeddingPipe, settings, topo.tp_group, plans)]
    specs += [LayerSpec(MoTLayerPipe, settings, i, topo.tp_group, rng_tracker, plans)
              for i in range(settings.num_layers)]
    specs += [LayerSpec(HeadPipe, settings, topo.tp_group, plans)]
    grid = PipeModelDataParallelTopology(num_pp=topo.pp_size, num_mp=topo.tp_size, num_dp=topo.dp_size)
    loss = PipeLoss(settings, topo.tp_group, plans, scale=layout.dp * layout.grad_accum)
    module = PipelineModule(layers=specs, topology=grid, loss_fn=loss, partition_method="type:MoTLayerPipe",
                            activation_checkpoint_interval=1 if layout.activation_checkpointing else 0,
                            activation_checkpoint_func=checkpoint_fn, checkpointable_layers=["MoTLayerPipe"])
    return module, loss
