"""The MoT language model: vocab-parallel embedding -> N MoT layers -> final norm -> vocab-parallel head
-> per-modality loss. Built from three pieces (embedding, layers, head) so a pipeline stage can hold
any contiguous slice of them; layers keep their global numbers, so every stage draws the same initial
weights as a single process would.

    model = MoTModel(settings, parallel=topo.context())
    plan = model.build_plan(modality_ids_cpu, segment_ids_cpu, device)   # host side, once per micro-batch
    out = model(tokens, plan, labels, label_modalities)                   # LossOutput: per-modality sums
    loss = out.loss_sum.sum() / global_loss_tokens                         # normalise globally
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from ..tensor_parallel import ColumnParallelLinear, VocabParallelEmbedding, vocab_parallel_cross_entropy
from ..tensor_parallel.weight_init import SeededInit, normal_init, param_seed
from .continuous import ContinuousEmbedding, ContinuousHead, diffusion_loss
from .layer import MoTLayer
from .norms import ModalityRMSNorm
from .rope import rope_cos_sin
from .routing import RoutingPlan, build_routing_plan
from .settings import ModelSettings

IGNORE_INDEX = -100


class LossOutput(NamedTuple):
    """A tuple (engines and ZeRO-3's output hooks handle tuples) with named fields."""
    loss_sum: torch.Tensor     # [M] fp32, sum of token losses per *target* modality (differentiable)
    token_count: torch.Tensor  # [M] fp32, loss tokens per target modality

    def mean(self) -> torch.Tensor:
        """Local mean (for logging); training normalises by the global count instead."""
        return self.loss_sum.sum() / self.token_count.sum().clamp(min=1.0)


def objective_weights(settings: ModelSettings, global_counts: torch.Tensor) -> torch.Tensor:
    """[M] weights w such that sum(loss_sum * w) over the global batch is the training objective: the mean
    LM loss over every discrete target, plus diffusion.loss_weight x the mean diffusion loss of each
    continuous modality (Transfusion's L = L_LM + lambda L_diffusion). Without continuous modalities every
    weight is 1 / (all targets): the mean loss per target token, as before."""
    cont = torch.zeros(settings.num_modalities, dtype=torch.bool, device=global_counts.device)
    cont[list(settings.continuous_ids())] = True
    counts = global_counts.float()
    discrete = counts[~cont].sum().clamp(min=1.0)
    return torch.where(cont, settings.diffusion_loss_weight / counts.clamp(min=1.0), 1.0 / discrete)


class MoTEmbedding(nn.Module):
    """Token ids [s, b] (sequence order) -> hidden [s(/tp), b, h] in the plan's order (routing for free:
    the ids are permuted, not the embeddings)."""

    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS, device=None):
        super().__init__()
        s = self.settings = settings
        self.word_embeddings = VocabParallelEmbedding(
            s.padded_vocab(parallel.tp_size), s.hidden_size, parallel=parallel, config=s,
            init=SeededInit(normal_init(s.init_std), param_seed(s.seed, "embedding")), device=device)
        self.continuous = ContinuousEmbedding(s, parallel, device) if s.continuous else None

    def forward(self, tokens: torch.Tensor, plan: RoutingPlan, continuous: Sequence = ()) -> torch.Tensor:
        """`continuous[k]`: (noised patches, timesteps) of continuous modality k (grouped order), whose
        projections replace that modality's rows (their token ids are placeholders)."""
        x = self.word_embeddings(plan.group_ids(tokens), sp_sizes=plan.sp_sizes)
        if self.continuous is not None:
            x = self.continuous(x, plan, [(c[0], c[1]) for c in continuous])
        return x.view(-1, plan.batch, self.settings.hidden_size)


class MoTHead(nn.Module):
    """Final norm (shared or per modality) + vocab-parallel output layer + per-modality cross-entropy."""

    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS, device=None):
        super().__init__()
        s = self.settings = settings
        self.parallel = parallel
        self.norm_copies = s.modalities if s.untie_final_norm else None
        self.final_norm = ModalityRMSNorm(s.hidden_size, self.norm_copies, s.norm_eps,
                                          sequence_parallel=parallel.sequence_parallel,
                                          params_dtype=s.params_dtype, device=device)
        self.output_layer = ColumnParallelLinear(
            s.hidden_size, s.padded_vocab(parallel.tp_size), parallel=parallel, config=s,
            init=SeededInit(normal_init(s.init_std), param_seed(s.seed, "output_layer")), bias=False, device=device)
        self.continuous = ContinuousHead(s, parallel, device) if s.continuous else None

    def forward(self, hidden: torch.Tensor, plan: RoutingPlan, labels: Optional[torch.Tensor] = None,
                label_modalities: Optional[torch.Tensor] = None, loss_mask: Optional[torch.Tensor] = None,
                continuous: Sequence = ()):
        """`continuous[k]`: (noised patches, timesteps, noise) of continuous modality k in grouped order (the
        noise may be None without labels). With labels: LossOutput (LM losses, and the diffusion losses
        against the noise). Without: the logits [N, V/tp] (grouped order), and with continuous modalities
        also their noise predictions (ContinuousHead.predict; a U-Net decoder reads the patches and t)."""
        out = self.outputs(hidden, plan, continuous)
        if labels is None:
            return out.logits if self.continuous is None else tuple(out)
        noise = [c[2] for c in continuous]
        return self.loss(out, plan, LossTargets(labels, label_modalities, loss_mask, noise))

    def outputs(self, hidden: torch.Tensor, plan: RoutingPlan, continuous: Sequence = ()) -> "HeadOutputs":
        """What the head computes before any loss (a pipeline's last stage hands this to the loss)."""
        x = hidden.reshape(-1, self.settings.hidden_size)
        counts = plan.stream_counts if self.norm_copies else None
        h = self.final_norm(x, counts)
        logits, _ = self.output_layer(h, sp_sizes=plan.sp_sizes)  # [N, V/tp], grouped
        preds = self.continuous.predict(h, plan, continuous) if self.continuous is not None else ()
        return HeadOutputs(logits, preds)

    def loss(self, outputs: "HeadOutputs", plan: RoutingPlan, targets: "LossTargets") -> LossOutput:
        return head_loss(outputs, plan, targets, self.parallel, self.settings)


class HeadOutputs(NamedTuple):
    """What the head computes before any loss: vocab-sharded logits [N, V/tp] (grouped order) and, per
    continuous modality, (its rows among the modality's tokens, the predicted noise there)."""
    logits: torch.Tensor
    noise_predictions: Sequence[Tuple[slice, torch.Tensor]] = ()


class LossTargets(NamedTuple):
    """What the loss compares against: the labels [s, b] (sequence order), each label's modality (None: all
    modality 0), a 0/1 mask of the positions that count (None: every labelled position), and per continuous
    modality its noise targets [n_k, D] (grouped order)."""
    labels: torch.Tensor
    label_modalities: Optional[torch.Tensor] = None
    loss_mask: Optional[torch.Tensor] = None
    noise: Sequence[torch.Tensor] = ()


def modality_loss(logits: torch.Tensor, plan: RoutingPlan, targets: LossTargets, parallel: ParallelContext,
                  settings: ModelSettings) -> LossOutput:
    """Per-modality loss sums and token counts from grouped-order, vocab-sharded logits and sequence-order
    labels (the LM part of `head_loss`)."""
    target = plan.group_ids(targets.labels)
    losses = vocab_parallel_cross_entropy(logits, target, parallel.tp_group, settings.vocab_size, IGNORE_INDEX)
    weight = (target != IGNORE_INDEX).to(torch.float32)
    if targets.loss_mask is not None:
        weight = weight * plan.group_ids(targets.loss_mask).to(torch.float32)
    mods = plan.group_ids(targets.label_modalities) if targets.label_modalities is not None else \
        torch.zeros_like(target)
    m = settings.num_modalities
    loss_sum = torch.zeros(m, device=losses.device).index_add(0, mods, losses * weight)
    count = torch.zeros(m, device=losses.device).index_add(0, mods, weight)
    return LossOutput(loss_sum, count)


def head_loss(outputs: HeadOutputs, plan: RoutingPlan, targets: LossTargets, parallel: ParallelContext,
              settings: ModelSettings) -> LossOutput:
    """The one loss path (a whole model's head, and the pipeline's last stage, training/pipeline.py):
    per-modality LM losses, plus the continuous modalities' diffusion losses."""
    out = modality_loss(outputs.logits, plan, targets, parallel, settings)
    if not settings.continuous:
        return out
    diff_sum, diff_count = diffusion_loss(outputs.noise_predictions, targets.noise, settings, parallel)
    return LossOutput(out.loss_sum + diff_sum, out.token_count + diff_count)


def plan_for(settings: ModelSettings, modality_ids: torch.Tensor, segment_ids: Optional[torch.Tensor] = None, *,
             parallel: ParallelContext = SINGLE_PROCESS, device: torch.device = torch.device("cpu"),
             span_ids: Optional[torch.Tensor] = None, context_start: Optional[torch.Tensor] = None) -> RoutingPlan:
    """The routing plan a model with `settings` needs for one micro-batch, from host-side modality (and
    document) ids [s, b]: the one place that maps model settings onto build_routing_plan (our model,
    the trainer's loader thread and the Megatron model all plan through it)."""
    return build_routing_plan(
        modality_ids, settings.num_modalities, routed=settings.routed, parallel=parallel,
        segment_ids=segment_ids if settings.document_masking else None, device=device,
        span_ids=span_ids, context_start=context_start)


class MoTModel(nn.Module):
    """`activation_checkpoint`: None, or a checkpoint function (e.g. deepspeed.checkpointing.checkpoint) that
    recomputes each layer in backward; it must restore the RNG tracker's states for TP-region dropout
    (DeepSpeed's does)."""

    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS,
                 layer_numbers: Optional[Iterable[int]] = None, pre_process: bool = True, post_process: bool = True,
                 rng_tracker=None, device=None, activation_checkpoint: Optional[Callable] = None):
        super().__init__()
        self.settings, self.parallel = settings, parallel
        self.pre_process, self.post_process = pre_process, post_process
        numbers = list(range(settings.num_layers)) if layer_numbers is None else list(layer_numbers)
        self.embedding = MoTEmbedding(settings, parallel, device) if pre_process else None
        self.layers = nn.ModuleList(MoTLayer(settings, i, parallel, rng_tracker, device) for i in numbers)
        self.head = MoTHead(settings, parallel, device) if post_process else None
        self.activation_checkpoint = activation_checkpoint
        if settings.tie_embeddings and pre_process and post_process:
            self.head.output_layer.weight = self.embedding.word_embeddings.weight

    def build_plan(self, modality_ids: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
                   device: Optional[torch.device] = None, span_ids: Optional[torch.Tensor] = None,
                   context_start: Optional[torch.Tensor] = None) -> RoutingPlan:
        """The routing plan for one micro-batch, from host-side modality (and document, image span, context
        start) ids [s, b]."""
        return plan_for(self.settings, modality_ids, segment_ids, parallel=self.parallel,
                        device=device or next(self.parameters()).device, span_ids=span_ids,
                        context_start=context_start)

    def rope(self, plan: RoutingPlan, device: torch.device):
        s = self.settings
        return rope_cos_sin(plan.position_ids, plan.seq_len, plan.batch, s.head_dim, s.rope_theta, device,
                            s.rope_scaling)

    def forward(self, tokens_or_hidden: torch.Tensor, plan: RoutingPlan, labels: Optional[torch.Tensor] = None,
                label_modalities: Optional[torch.Tensor] = None, loss_mask: Optional[torch.Tensor] = None,
                continuous: Sequence = ()):
        """`continuous[k]`: (noised patches, timesteps, noise) of continuous modality k (data/batch.py
        ContinuousInputs, grouped order), for models with continuous modalities."""
        x = self.embedding(tokens_or_hidden, plan, continuous) if self.pre_process else tokens_or_hidden
        rope = self.rope(plan, x.device)
        for layer in self.layers:
            x = layer(x, plan, rope) if self.activation_checkpoint is None else \
                self.activation_checkpoint(layer, x, plan, rope)
        if not self.post_process:
            return x
        return self.head(x, plan, labels, label_modalities, loss_mask, continuous)
