"""MoTGPTModel: the thinnest GPTModel subclass that runs MoT layers.

    model = MoTGPTModel(config, get_mot_layer_spec(options), vocab_size, max_seq_len, mot=options)
    out = model(tokens, position_ids, attention_mask, labels=labels, modality_ids=modality_ids)   # [b, s]

What it adds to GPTModel.forward, given per-token modality ids (or a prebuilt routing plan):
  1. builds the routing plan on the host (pass host-side modality ids, as the data loader has them;
     device ids are copied back once, which synchronises), for the model's own TP group: the one in
     its `pg_collection` (or its layers'), never a global default;
  2. permutes input ids and labels into the plan's grouped order, so Megatron's embedding, the MoT
     layers, the final norm, the output layer and its loss all run on grouped tokens (the embedding is
     order-agnostic: positions enter through RoPE inside the layers, `position_embedding_type='none'`);
  3. hands the plan to every layer in `packed_seq_params` (MoTPackedSeqParams), the argument the block
     already passes to each layer and captures for recompute; with pipeline parallelism every stage
     calls forward with its own batch (modality ids included) and builds the same plan, as Megatron
     does for cu_seqlens;
  4. returns per-token losses ([b, s]) or logits ([b, s, V/tp]) back in sequence order.
Megatron's inputs, all in sequence order, are honoured:
  position_ids [b, s]    RoPE positions (else the plan's: reset per document with segment_ids, or 0..s-1);
  attention_mask         bool, True = masked (Megatron's convention), [b or 1, 1, s, s]: restricts the
                         causal (and document) mask further; attention stays causal, as GPTModel's causal
                         layer spec says, and a fully masked query row attends to itself (no NaN);
  decoder_input [s, b, h] precomputed embeddings (e.g. a vision encoder's), grouped here; not under SP;
  labels [b, s], runtime_gather_output, extra_block_kwargs, loss_mask / padding_mask as GPTModel.
Refused by name: inference_context (no KV cache), packed_seq_params (THD packing: use segment_ids), a
sequence length TP does not divide under SP (Megatron's embedding splits the sequence dimension evenly),
GPTModel options that assume sequence order or their own RoPE (mtp_block_spec, position_embedding_type
other than 'none', rotary_base other than mot.rope_theta, rotary_percent, rope_scaling,
seq_len_interpolation_factor), and the TransformerConfig fields listed in settings.py.
The loss is Megatron's (`compute_language_model_loss`), including padded vocabulary entries if the
vocabulary is padded, exactly as a dense GPTModel would compute it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams

from ..distributed.parallel_context import ParallelContext
from ..model.model import plan_for
from ..model.rope import rope_cos_sin
from ..model.routing import RoutingPlan
from .call_keywords import model_call
from .layer import MoTTransformerLayer
from .settings import MoTOptions, check_megatron_config, settings_from_megatron


@dataclass
class MoTPackedSeqParams(PackedSeqParams):
    routing_plan: Optional[RoutingPlan] = None
    rope: Optional[tuple] = None


# GPTModel keyword -> (value that means "off", why MoT refuses anything else)
_REFUSED_KWARGS = {
    "mtp_block_spec": (None, "multi-token prediction shifts tokens in sequence order; MoT runs them grouped"),
    "rotary_percent": (1.0, "MoT applies RoPE to the whole head"),
    "rope_scaling": (False, "MoT RoPE has no scaling"),
    "seq_len_interpolation_factor": (None, "MoT RoPE has no interpolation"),
}


class MoTGPTModel(GPTModel):
    def __init__(self, config, transformer_layer_spec, vocab_size: int, max_sequence_length: int, *,
                 mot: MoTOptions = MoTOptions(), **kwargs):
        _check_gpt_kwargs(kwargs, mot)
        check_megatron_config(config, mot)  # before any weight is built; TP divisibility once the group is known
        kwargs["position_embedding_type"] = "none"
        super().__init__(config, transformer_layer_spec, vocab_size, max_sequence_length, **kwargs)
        self.mot = mot
        self.parallel = ParallelContext.of(self.own_tp_group(), config.sequence_parallel)
        self.settings = settings_from_megatron(config, mot, self.parallel.tp_size)
        if self.parallel.sequence_parallel and not kwargs.get("scatter_embedding_sequence_parallel", True):
            raise ValueError("MoTGPTModel under sequence parallelism needs scatter_embedding_sequence_parallel=True "
                             "(the MoT layers expect this rank's shard of the grouped tokens)")

    def own_tp_group(self):
        """The model's own TP group: its pg_collection's (0.14+; `model_comm_pgs` in 0.13), else its layers'
        (a stage may have none), else Megatron's global one (0.12 has no process-group collections)."""
        for attr in ("pg_collection", "model_comm_pgs"):
            pg = self.__dict__.get(attr)
            if pg is not None and getattr(pg, "tp", None) is not None:
                return pg.tp
        for module in self.modules():
            if isinstance(module, MoTTransformerLayer):
                return module.tp_group
        from megatron.core import parallel_state
        return parallel_state.get_tensor_model_parallel_group()

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Megatron's loss, on the model's own TP group: Megatron's unfused vocab-parallel cross-entropy
        (megatron-core 0.16.1 and older) reduces over the global TP group, whatever pg_collection says."""
        from megatron.core import parallel_state
        group = self.own_tp_group()
        if getattr(self.config, "cross_entropy_loss_fusion", False) or \
                group is parallel_state.get_tensor_model_parallel_group(check_initialized=False):
            return super().compute_language_model_loss(labels, logits)
        from ..tensor_parallel import vocab_parallel_cross_entropy
        return vocab_parallel_cross_entropy(logits, labels.transpose(0, 1), group).transpose(0, 1).contiguous()

    def build_plan(self, modality_ids: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
                   device: Optional[torch.device] = None) -> RoutingPlan:
        """modality_ids (and segment_ids) [b, s] on the host; Megatron's batch-first layout."""
        if modality_ids is None or modality_ids.dim() != 2:
            raise ValueError(f"MoTGPTModel.build_plan: modality_ids must be a [b, s] tensor, got "
                             f"{None if modality_ids is None else tuple(modality_ids.shape)}")
        if segment_ids is not None and segment_ids.shape != modality_ids.shape:
            raise ValueError(f"MoTGPTModel.build_plan: segment_ids {tuple(segment_ids.shape)} and modality_ids "
                             f"{tuple(modality_ids.shape)} must have the same [b, s] shape")
        return plan_for(self.settings, modality_ids.t().cpu(),
                        segment_ids.t().cpu() if segment_ids is not None else None, parallel=self.parallel,
                        device=device or next(self.parameters()).device)

    def forward(self, input_ids: Optional[torch.Tensor] = None, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, decoder_input: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **megatron_keywords):
        """GPTModel.forward's first arguments (same order), its other arguments as keywords, plus modality_ids /
        segment_ids [b, s] or a routing_plan (call_keywords.py checks them: what MoT does not support is refused
        by name). Returns losses [b, s] (with labels) or logits [b, s, V/tp], in sequence order."""
        call = model_call(megatron_keywords)
        modality_ids = call.modality_ids
        plan = call.routing_plan or self._plan_from(modality_ids, call.segment_ids, input_ids)
        s, b = plan.seq_len, plan.batch
        for name, t in (("input_ids", input_ids), ("labels", labels), ("position_ids", position_ids),
                        ("modality_ids", modality_ids)):
            if t is not None and tuple(t.shape) != (b, s):
                raise ValueError(f"MoTGPTModel: {name} has shape {tuple(t.shape)}, the routing plan is for "
                                 f"[b, s] = [{b}, {s}]")
        tp = self.parallel.tp_size
        if self.parallel.sequence_parallel and s % tp:
            raise ValueError(f"MoTGPTModel: sequence length {s} is not divisible by the tensor-parallel size {tp}; "
                             "Megatron's sequence parallelism splits the sequence dimension evenly: pad the batch")
        device = next(self.parameters()).device
        if attention_mask is not None:
            plan = replace(plan, attention_mask=_combined_mask(plan, attention_mask))
        positions = position_ids.t() if position_ids is not None else plan.position_ids
        rope = rope_cos_sin(positions, s, b, self.settings.head_dim, self.mot.rope_theta, device)
        if decoder_input is not None:
            decoder_input = self._grouped_decoder_input(decoder_input, plan)

        def grouped(t):  # [b, s] -> the same tokens in grouped order, shaped so Megatron's [b,s]->[s,b] fits
            return plan.group_ids(t.t()).view(s, b).t() if t is not None else None
        out = super().forward(grouped(input_ids), None, None, decoder_input=decoder_input, labels=grouped(labels),
                              packed_seq_params=MoTPackedSeqParams(routing_plan=plan, rope=rope), **call.gpt_keywords)
        if not self.post_process:
            return out
        seq = out.transpose(0, 1)                            # [s, b, ...] grouped
        flat = seq.reshape(s * b, *seq.shape[2:])
        return plan.to_sequence(flat).view(seq.shape).transpose(0, 1).contiguous()

    def _plan_from(self, modality_ids, segment_ids, input_ids) -> RoutingPlan:
        if modality_ids is None:
            raise ValueError(
                f"MoTGPTModel.forward needs modality_ids=[b, s] (each token's index into mot.modalities="
                f"{tuple(self.mot.modalities)}) or routing_plan=model.build_plan(modality_ids, segment_ids); "
                "every pipeline stage needs them (each builds the plan from its own batch)")
        return self.build_plan(modality_ids, segment_ids, input_ids.device if input_ids is not None else None)

    def _grouped_decoder_input(self, x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """[s, b, h] in sequence order (Megatron's layout) -> the same tokens in grouped order."""
        s, b = plan.seq_len, plan.batch
        if self.parallel.sequence_parallel:
            raise ValueError("MoTGPTModel: decoder_input under sequence parallelism is not supported (grouping by "
                             "modality needs the whole sequence, Megatron passes a shard); pass input_ids, or run "
                             "without sequence_parallel")
        if x.dim() != 3 or tuple(x.shape[:2]) != (s, b):
            raise ValueError(f"MoTGPTModel: decoder_input has shape {tuple(x.shape)}, expected [s, b, h] = "
                             f"[{s}, {b}, {self.config.hidden_size}] in sequence order")
        return plan.to_grouped(x.reshape(s * b, x.shape[-1])).view(s, b, x.shape[-1])


def _combined_mask(plan: RoutingPlan, attention_mask: torch.Tensor) -> torch.Tensor:
    """The plan's mask (causal, per document) further restricted by Megatron's attention_mask (True =
    masked), as the [b, 1, s, s] bool "may attend" mask the MoT attention takes."""
    s, b = plan.seq_len, plan.batch
    if attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or \
            tuple(attention_mask.shape[1:]) != (1, s, s) or attention_mask.shape[0] not in (1, b):
        raise ValueError(f"MoTGPTModel: attention_mask must be bool [b or 1, 1, s, s] = [{b}, 1, {s}, {s}] with "
                         f"True = masked (Megatron's convention), got {attention_mask.dtype} "
                         f"{tuple(attention_mask.shape)}")
    device = attention_mask.device
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    allowed = ~attention_mask & causal
    if plan.attention_mask is not None:
        allowed = allowed & plan.attention_mask.to(device)
    # a query masked from every key would give NaN in softmax, and NaN spreads to every later query that
    # may see it; let it see itself (its output is meaningless either way, as in Megatron)
    eye = torch.eye(s, dtype=torch.bool, device=device)
    return (allowed | eye).expand(b, 1, s, s)


def _check_gpt_kwargs(kwargs: dict, mot: MoTOptions) -> None:
    problems = []
    if kwargs.get("position_embedding_type", "none") != "none":
        problems.append("position_embedding_type: MoTGPTModel applies RoPE inside its layers (from the routing "
                        "plan's positions); leave it 'none'")
    if kwargs.get("rotary_base", mot.rope_theta) != mot.rope_theta:
        problems.append(f"rotary_base={kwargs['rotary_base']}: MoT RoPE uses MoTOptions.rope_theta="
                        f"{mot.rope_theta}; set the base there (and drop rotary_base)")
    for key, (off, why) in _REFUSED_KWARGS.items():
        if kwargs.get(key, off) != off:
            problems.append(f"{key}={kwargs[key]!r}: {why}; leave it at {off!r}")
    if problems:
        raise ValueError("MoTGPTModel cannot honour these GPTModel arguments:\n  - " + "\n  - ".join(problems))
