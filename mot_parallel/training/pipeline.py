"""Pipeline parallelism on DeepSpeed's PipelineModule: embedding, MoT layers, head as LayerSpecs.

DeepSpeed feeds inputs only to the first stage and labels only to the last, and stages exchange one
tuple of tensors, so the routing plan travels *in* the activation tuple, by DeepSpeed's rules (fixed
shapes, integer tensors passed through, no None):

    (hidden [s(/tp), b, h],) + RoutingPlan.to_tensors()      (see model/routing.py)

A model with continuous modalities (Transfusion) gives the first stage, after those, each continuous
modality's noised patches and timesteps; the embedding consumes them, so they never cross a stage (their
sizes vary per micro-batch). The noise targets ride with the labels, which only the last stage reads.

Each stage turns those tensors back into the host-side plan once per micro-batch (`StagePlans`: one
small device->host read when a micro-batch enters the stage; the layers never synchronise). Modules of
a stage pass the plan tensors through unchanged, and activation recompute runs a layer on detached
views of them, so the stage finds a micro-batch's plan again by the storage of its `perm` tensor; no
state is attached to any tensor.
"""
from __future__ import annotations

import weakref
from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn

from ..config.parallel_layout import ParallelLayout
from ..distributed.collectives import group_rank, group_size
from ..model.layer import MoTLayer
from ..model.continuous import diffusion_loss
from ..model.model import LossOutput, MoTEmbedding, MoTHead, modality_loss, objective_weights
from ..model.rope import rope_cos_sin
from ..model.routing import PLAN_TENSORS, RoutingPlan
from ..model.settings import ModelSettings


def stage_inputs(tokens: torch.Tensor, plan: RoutingPlan, continuous: Sequence = ()) -> Tuple[torch.Tensor, ...]:
    """The first stage's input tuple for one micro-batch: tokens + the plan as tensors (+ per continuous
    modality its noised patches and timesteps)."""
    return (tokens,) + plan.to_tensors(tokens.device) + tuple(t for c in continuous for t in (c[0], c[1]))


def pipeline_micro_batch(mb, global_counts: torch.Tensor) -> Tuple[tuple, tuple]:
    """(inputs, labels) of one micro-batch for DeepSpeed's pipeline engine (data/batch.py MicroBatch)."""
    return (stage_inputs(mb.tokens, mb.plan, mb.continuous),
            (mb.labels, mb.label_modalities, global_counts) + tuple(c[2] for c in mb.continuous))


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
        plan = RoutingPlan.from_tensors(inputs[1:1 + PLAN_TENSORS], self.tp_size, self.tp_rank)
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

    def forward(self, inputs):
        """Consumes the continuous inputs after the plan tensors: the tuple it returns has fixed shapes."""
        plan, _ = self.plans(inputs)
        rest = inputs[1 + PLAN_TENSORS:]
        continuous = [(rest[2 * k], rest[2 * k + 1]) for k in range(len(rest) // 2)]
        return (MoTEmbedding.forward(self, inputs[0], plan, continuous),) + tuple(inputs[1:1 + PLAN_TENSORS])


class MoTLayerPipe(_StageIO, MoTLayer):
    def __init__(self, settings: ModelSettings, layer_number: int, tp_group, rng_tracker, plans: StagePlans):
        super().__init__(settings, layer_number, tp_group, rng_tracker)
        self.plans = plans

    def run(self, hidden, plan, rope):
        return MoTLayer.forward(self, hidden, plan, rope)


class HeadPipe(_StageIO, MoTHead):
    """Final norm + vocab-parallel logits (+ the continuous modalities' noise predictions, appended after
    the plan tensors: the last stage's outputs go to the loss, never to another stage, so their sizes may
    vary); the loss is PipeLoss (DeepSpeed's loss_fn, last stage)."""

    def __init__(self, settings: ModelSettings, tp_group, plans: StagePlans):
        super().__init__(settings, tp_group)
        self.plans = plans

    def forward(self, inputs):
        plan, _ = self.plans(inputs)
        out = MoTHead.forward(self, inputs[0], plan)
        if self.continuous is None:
            return (out,) + tuple(inputs[1:1 + PLAN_TENSORS])
        logits, preds = out
        return (logits,) + tuple(inputs[1:1 + PLAN_TENSORS]) + tuple(p for _, p in preds)


class PipeLoss:
    """loss_fn(outputs, labels) on the last stage. Returns the micro-batch's share of the global batch's
    objective (model.py `objective_weights`), pre-multiplied by `scale` = DP x accumulation so that
    DeepSpeed's 1/accumulation and 1/DP averaging cancel; keeps per-modality sums for logging."""

    def __init__(self, settings: ModelSettings, tp_group, plans: StagePlans, scale: float):
        self.settings, self.tp_group, self.plans, self.scale = settings, tp_group, plans, float(scale)
        self.sp = settings.sequence_parallel_with(group_size(tp_group))
        self.loss_sum = self.count = None

    def __call__(self, outputs, labels):
        """`outputs`: the head's (logits, plan tensors) and, with continuous modalities, ((logits, noise
        predictions), ...); `labels`: (labels, label modalities, global target counts [M], *noise targets)."""
        plan, _ = self.plans(outputs)
        out = modality_loss(outputs[0], plan, labels[0], labels[1], None, self.tp_group, self.settings)
        if self.settings.continuous:
            ids = self.settings.continuous_ids()
            preds = [(plan.modality_rows(m)[1], p) for m, p in zip(ids, outputs[1 + PLAN_TENSORS:])]
            diff_sum, diff_count = diffusion_loss(preds, labels[3:], self.settings, self.tp_group, self.sp)
            out = LossOutput(out.loss_sum + diff_sum, out.token_count + diff_count)
        if self.loss_sum is None:
            self.loss_sum, self.count = out.loss_sum.detach().clone(), out.token_count.clone()
        else:
            self.loss_sum += out.loss_sum.detach()
            self.count += out.token_count
        return (out.loss_sum * objective_weights(self.settings, labels[2])).sum() * self.scale

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
