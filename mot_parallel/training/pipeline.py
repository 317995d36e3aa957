"""Pipeline parallelism on DeepSpeed's PipelineModule: embedding, MoT layers, head + loss as LayerSpecs.

DeepSpeed feeds inputs only to the first stage and labels only to the last, and stages exchange one
tuple of tensors, so the routing plan travels *in* the activation tuple, by DeepSpeed's rules (one
float tensor in the graph, integer tensors passed through, fixed shapes, no None):

    (hidden [s(/tp), b, h], perm [N], inv_perm [N], counts [M], flags [2], positions [s, b], segments [s, b])

`flags` = (identity permutation?, document masking?). A stage reads `counts` and `flags` to the host
once per micro-batch, when its first module meets the tuple (one device->host copy per stage and
micro-batch; the layers themselves never synchronise), and hangs the host-side plan on the `perm`
tensor object that every module passes through unchanged. Activation recompute runs the layers on
detached copies, so `checkpoint_keeping_plan` re-attaches it.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn

from ..distributed.collectives import group_rank, group_size
from ..model.layer import MoTLayer
from ..model.model import MoTEmbedding, MoTHead
from ..model.rope import rope_cos_sin
from ..model.routing import RoutingPlan, document_mask, sp_shard
from ..model.settings import ModelSettings


def plan_inputs(tokens: torch.Tensor, plan: RoutingPlan) -> Tuple[torch.Tensor, ...]:
    """The first stage's input tuple for one micro-batch (tokens + the plan as tensors)."""
    n, dev = plan.num_tokens, tokens.device
    ident = plan.perm is None
    perm = torch.arange(n, device=dev) if ident else plan.perm
    inv = perm if ident else plan.inv_perm
    s, b = plan.seq_len, plan.batch
    pos = plan.position_ids if plan.position_ids is not None else \
        torch.arange(s, device=dev).unsqueeze(1).expand(s, b).contiguous()
    seg = plan.segment_ids if plan.segment_ids is not None else torch.zeros(s, b, dtype=torch.long, device=dev)
    flags = torch.tensor([int(ident), int(plan.segment_ids is not None)], device=dev)
    return tokens, perm, inv, torch.tensor(plan.counts, device=dev), flags, pos, seg


class PlanReader:
    """Rebuilds the host-side plan from a tuple (once per stage and micro-batch) and caches it on `perm`."""

    def __init__(self, settings: ModelSettings, tp_group):
        self.settings, self.tp_size, self.tp_rank = settings, group_size(tp_group), group_rank(tp_group)

    def __call__(self, t: Tuple[torch.Tensor, ...]) -> RoutingPlan:
        perm = t[1]
        plan = getattr(perm, "mot_plan", None)
        if plan is not None:
            return plan
        counts, flags = t[3].tolist(), t[4].tolist()  # the stage's one device->host read
        s, b = t[5].shape
        sizes = local = None
        if self.settings.sequence_parallel and self.tp_size > 1:
            sizes, local = sp_shard(s * b, counts, self.tp_size, self.tp_rank)
        segments = t[6] if flags[1] else None
        plan = RoutingPlan(s, b, tuple(counts), self.settings.routed, None if flags[0] else perm,
                           None if flags[0] else t[2], sizes, local, t[5], segments,
                           document_mask(segments) if segments is not None else None)
        perm.mot_plan = plan
        perm.mot_rope = rope_cos_sin(plan.position_ids, s, b, self.settings.head_dim, self.settings.rope_theta,
                                     perm.device, self.settings.rope_scaling)
        return plan


class _StageIO:
    """Mixin for stage modules: the plan comes from the activation tuple and the module's result replaces
    the hidden states in it; subclasses set `read_plan` and define `run(hidden, plan, rope)`."""

    def forward(self, inputs):
        plan = self.read_plan(inputs)
        return (self.run(inputs[0], plan, inputs[1].mot_rope),) + tuple(inputs[1:])


class EmbeddingPipe(_StageIO, MoTEmbedding):
    def __init__(self, settings: ModelSettings, tp_group=None):
        super().__init__(settings, tp_group)
        self.read_plan = PlanReader(settings, tp_group)

    def run(self, tokens, plan, rope):
        return MoTEmbedding.forward(self, tokens, plan)


class MoTLayerPipe(_StageIO, MoTLayer):
    def __init__(self, settings: ModelSettings, layer_number: int, tp_group=None, rng_tracker=None):
        super().__init__(settings, layer_number, tp_group, rng_tracker)
        self.read_plan = PlanReader(settings, tp_group)

    def run(self, hidden, plan, rope):
        return MoTLayer.forward(self, hidden, plan, rope)


class HeadPipe(_StageIO, MoTHead):
    """Final norm + vocab-parallel logits; the loss is PipeLoss (DeepSpeed's loss_fn, last stage)."""

    def __init__(self, settings: ModelSettings, tp_group=None):
        super().__init__(settings, tp_group)
        self.read_plan = PlanReader(settings, tp_group)

    def run(self, hidden, plan, rope):
        return MoTHead.forward(self, hidden, plan)


class PipeLoss:
    """loss_fn(outputs, labels) on the last stage. Returns the micro-batch's share of the global-mean
    loss, pre-multiplied so DeepSpeed's 1/accumulation and 1/DP averaging cancel; keeps per-modality sums
    for logging. labels = (labels [s, b], label modalities [s, b], global loss-token count [1])."""

    def __init__(self, head: HeadPipe, dp: int, accum: int):
        self.head, self.scale = head, float(dp * accum)
        self.loss_sum = self.count = None

    def __call__(self, outputs, labels):
        logits, plan = outputs[0], self.head.read_plan(outputs)
        out = self.head.loss(logits, plan, labels[0], labels[1])
        if self.loss_sum is None:
            self.loss_sum, self.count = out.loss_sum.detach().clone(), out.token_count.clone()
        else:
            self.loss_sum += out.loss_sum.detach()
            self.count += out.token_count
        return out.loss_sum.sum() * (self.scale / labels[2].sum())

    def pop(self):
        out, self.loss_sum, self.count = (self.loss_sum, self.count), None, None
        return out


def checkpoint_keeping_plan(checkpoint: Callable) -> Callable:
    """Wrap DeepSpeed's activation checkpoint so the plan cached on `perm` survives recompute."""
    def run(function, *args):
        cached = (getattr(args[1], "mot_plan", None), getattr(args[1], "mot_rope", None))

        def again(*a):
            if cached[0] is not None:
                a[1].mot_plan, a[1].mot_rope = cached
            return function(*a)
        out = checkpoint(again, *args)
        if cached[0] is not None and isinstance(out, tuple):
            out[1].mot_plan, out[1].mot_rope = cached
        return out
    return run


def build_pipeline_module(settings: ModelSettings, topo, rng_tracker, activation_checkpointing: bool,
                          checkpoint_fn: Callable) -> Tuple[nn.Module, PipeLoss]:
    from deepspeed.pipe import LayerSpec, PipelineModule
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    specs = [LayerSpec(EmbeddingPipe, settings, topo.tp_group)]
    specs += [LayerSpec(MoTLayerPipe, settings, i, topo.tp_group, rng_tracker) for i in range(settings.num_layers)]
    specs += [LayerSpec(HeadPipe, settings, topo.tp_group)]
    grid = PipeModelDataParallelTopology(num_pp=topo.pp_size, num_mp=topo.tp_size, num_dp=topo.dp_size)
    loss = PipeLoss(None, topo.dp_size, 1)  # head and accumulation are filled in by the trainer
    module = PipelineModule(layers=specs, topology=grid, loss_fn=loss, partition_method="type:MoTLayerPipe",
                            activation_checkpoint_interval=1 if activation_checkpointing else 0,
                            activation_checkpoint_func=checkpoint_keeping_plan(checkpoint_fn),
                            checkpointable_layers=["MoTLayerPipe"])
    heads = [m for m in module.modules() if isinstance(m, HeadPipe)]
    loss.head = heads[0] if heads else None
    return module, loss
