"""Pipeline parallelism on DeepSpeed's PipelineModule: embedding, MoT layers, head as LayerSpecs.

Between stages DeepSpeed sends one tuple of tensors (fixed shapes, integer tensors passed through, no None),
so the routing plan crosses a stage boundary as tensors (model/routing.py `to_tensors`):

    (hidden [s(/tp), b, h],) + RoutingPlan.to_tensors()

A model with continuous modalities (Transfusion) gives the first stage, after those, each continuous
modality's noised patches and timesteps; the embedding consumes them, so they never cross a stage (their
sizes vary per micro-batch). The noise targets ride with the labels, which only the last stage reads. A
U-Net decoder (model/unet.py) reads the timesteps and the noised patches: they cross the stages as
fixed-shape integer tensors after the plan's (continuous.decoder_grids), which the head reads back.

Inside a stage the tuple is a `StageTuple`: the plan travels in it as the host-side object, built once
when the micro-batch enters the stage (pipeline_module.py `MoTPipelineModule.forward`: one small device->host read) together
with its RoPE tables. DeepSpeed's activation checkpointing keeps non-tensor arguments with the saved
tensors, so a layer recomputed in backward gets its own micro-batch's plan back from the tuple: nothing is
looked up or attached to a tensor. Leaving the stage the tuple goes back to tensors (`leave`); the last
stage hands the head's outputs and the plan to the loss, which is the model's own (`head_loss`).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple

import torch
from ..distributed.parallel_context import ParallelContext
from ..model.layer import MoTLayer
from ..model.continuous import decoder_grids, inputs_from_grids
from ..model.model import HeadOutputs, LossOutput, LossTargets, MoTEmbedding, MoTHead, head_loss, objective_weights
from ..model.rope import rope_cos_sin
from ..model.routing import PLAN_TENSORS, RoutingPlan
from ..model.settings import ModelSettings


class StageTuple(NamedTuple):
    """What the modules of one stage pass each other (DeepSpeed hands the tuple from module to module)."""
    hidden: torch.Tensor            # token ids on entering the first stage, then hidden states
    plan: RoutingPlan               # host-side, this micro-batch's
    rope: tuple                     # (cos, sin) for the plan's positions
    plan_tensors: tuple             # the plan as sent between stages (sent on unchanged)
    continuous: tuple = ()          # per continuous modality (noised patches, timesteps): on the first stage,
                                    # and on every stage when a U-Net decoder needs them in the head


class LastStageOutputs(NamedTuple):
    """The last stage's output: what DeepSpeed hands the loss function (never sent to another stage)."""
    head: HeadOutputs
    plan: RoutingPlan


class PipeLabels(NamedTuple):
    """The labels tuple DeepSpeed gives the last stage (tensors only): sequence-order labels and their
    modalities, the global batch's target counts [M] (the objective's normaliser), the noise targets."""
    labels: torch.Tensor
    label_modalities: torch.Tensor
    global_counts: torch.Tensor
    noise: tuple = ()

    @classmethod
    def unpack(cls, labels: tuple) -> "PipeLabels":
        return cls(labels[0], labels[1], labels[2], tuple(labels[3:]))

    def pack(self) -> tuple:
        return (self.labels, self.label_modalities, self.global_counts) + tuple(self.noise)


def pipeline_micro_batch(mb, global_counts: torch.Tensor) -> Tuple[tuple, tuple]:
    """(inputs, labels) of one micro-batch for DeepSpeed's pipeline engine (data/batch.py MicroBatch): the
    first stage's tensors (tokens, the plan's tensors, per continuous modality its noised patches and
    timesteps) and the last stage's (PipeLabels)."""
    inputs = (mb.tokens,) + mb.plan.to_tensors(mb.tokens.device) + \
        tuple(t for c in mb.continuous for t in (c[0], c[1]))
    labels = PipeLabels(mb.labels, mb.label_modalities, global_counts, tuple(c[2] for c in mb.continuous))
    return inputs, labels.pack()


def enter(inputs: Sequence[torch.Tensor], settings: ModelSettings, parallel: ParallelContext) -> StageTuple:
    """A stage's received tensors -> its StageTuple (the plan and RoPE tables built once, here)."""
    plan_tensors = tuple(inputs[1:1 + PLAN_TENSORS])
    plan = RoutingPlan.from_tensors(plan_tensors, parallel)
    rope = rope_cos_sin(plan.position_ids, plan.seq_len, plan.batch, settings.head_dim, settings.rope_theta,
                        inputs[0].device, settings.rope_scaling)
    rest = inputs[1 + PLAN_TENSORS:]
    if rest and not rest[0].is_floating_point():  # a later stage: the U-Net decoder's grids (leave)
        continuous = tuple(inputs_from_grids(settings, plan, rest))
    else:                                         # the first stage: (noised patches, timesteps) pairs
        continuous = tuple((rest[2 * k], rest[2 * k + 1]) for k in range(len(rest) // 2))
    return StageTuple(inputs[0], plan, rope, plan_tensors, continuous)


def leave(out, settings: ModelSettings):
    """A stage's last module's result -> what DeepSpeed sends on (tensors), or the loss's input. A U-Net
    decoder's inputs go on as fixed-shape integer grids (continuous.decoder_grids): a stage boundary carries
    the same shapes every micro-batch, and no gradient for them."""
    if isinstance(out, LastStageOutputs):
        return out
    stage = StageTuple(*out)
    grids = decoder_grids(settings, stage.plan, stage.continuous) if stage.continuous else ()
    return (stage.hidden,) + stage.plan_tensors + grids


class EmbeddingPipe(MoTEmbedding):
    def forward(self, inputs):
        """Consumes the continuous inputs: the tuple it returns has fixed shapes."""
        stage = StageTuple(*inputs)
        hidden = MoTEmbedding.forward(self, stage.hidden, stage.plan, stage.continuous)
        unet = any(c.unet for c in self.settings.continuous)   # the head's up blocks read them too
        return stage._replace(hidden=hidden, continuous=stage.continuous if unet else ())


class MoTLayerPipe(MoTLayer):
    def forward(self, inputs):
        stage = StageTuple(*inputs)
        return stage._replace(hidden=MoTLayer.forward(self, stage.hidden, stage.plan, stage.rope))


class HeadPipe(MoTHead):
    """Final norm + vocab-parallel logits (+ the continuous modalities' noise predictions); the loss is
    PipeLoss (DeepSpeed's loss_fn, last stage)."""

    def forward(self, inputs):
        stage = StageTuple(*inputs)
        return LastStageOutputs(self.outputs(stage.hidden, stage.plan, stage.continuous), stage.plan)


class PipeLoss:
    """loss_fn(outputs, labels) on the last stage: the model's loss (`head_loss`), as the micro-batch's share of
    the global batch's objective (model.py `objective_weights`), pre-multiplied by `scale` = DP x
    accumulation so that DeepSpeed's 1/accumulation and 1/DP averaging cancel; keeps per-modality sums for
    logging."""

    def __init__(self, settings: ModelSettings, parallel: ParallelContext, scale: float):
        self.settings, self.parallel, self.scale = settings, parallel, float(scale)
        self.loss_sum = self.count = None

    def __call__(self, outputs: LastStageOutputs, labels: tuple):
        lab = PipeLabels.unpack(labels)
        targets = LossTargets(lab.labels, lab.label_modalities, None, lab.noise)
        out: LossOutput = head_loss(outputs.head, outputs.plan, targets, self.parallel, self.settings)
        if self.loss_sum is None:
            self.loss_sum, self.count = out.loss_sum.detach().clone(), out.token_count.clone()
        else:
            self.loss_sum += out.loss_sum.detach()
            self.count += out.token_count
        return (out.loss_sum * objective_weights(self.settings, lab.global_counts)).sum() * self.scale

    def pop(self):
        out, self.loss_sum, self.count = (self.loss_sum, self.count), None, None
        return out
