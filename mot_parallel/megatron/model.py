"""MoTGPTModel: the thinnest GPTModel subclass that runs MoT layers.

What it adds to GPTModel.forward, given per-token modality ids (or a prebuilt routing plan):
  1. builds the routing plan on the host (pass host-side modality ids, as the data loader has them;
     device ids are copied back once, which synchronises);
  2. permutes input ids and labels into the plan's grouped order, so Megatron's embedding, the MoT
     layers, the final norm, the output layer and its loss all run on grouped tokens (the embedding is
     order-agnostic: positions enter through RoPE inside the layers, `position_embedding_type='none'`);
  3. hands the plan to every layer in `packed_seq_params` (MoTPackedSeqParams), the argument the block
     already passes to each layer and captures for recompute; with pipeline parallelism every stage
     calls forward with its own batch and builds the same plan, as Megatron does for cu_seqlens;
  4. returns per-token losses ([b, s]) or logits ([b, s, V/tp]) back in sequence order.
The loss is Megatron's (`compute_language_model_loss`), including padded vocabulary entries if the
vocabulary is padded, exactly as a dense GPTModel would compute it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams

from ..model.rope import rope_cos_sin
from ..model.model import plan_for
from ..model.routing import RoutingPlan
from .layer import MoTOptions, settings_from_megatron


@dataclass
class MoTPackedSeqParams(PackedSeqParams):
    routing_plan: Optional[RoutingPlan] = None
    rope: Optional[tuple] = None


class MoTGPTModel(GPTModel):
    def __init__(self, config, transformer_layer_spec, vocab_size: int, max_sequence_length: int, *,
                 mot: MoTOptions = MoTOptions(), **kwargs):
        if kwargs.get("position_embedding_type", "none") != "none":
            raise ValueError("MoTGPTModel applies RoPE inside its layers (from the routing plan's positions); "
                             "leave position_embedding_type='none'")
        kwargs["position_embedding_type"] = "none"
        super().__init__(config, transformer_layer_spec, vocab_size, max_sequence_length, **kwargs)
        self.mot = mot
        self.settings = settings_from_megatron(config, mot)

    def build_plan(self, modality_ids: torch.Tensor, segment_ids: Optional[torch.Tensor] = None,
                   device: Optional[torch.device] = None) -> RoutingPlan:
        """modality_ids [b, s] (host); Megatron's batch-first layout."""
        from megatron.core import parallel_state
        return plan_for(self.settings, modality_ids.t().cpu(),
                        segment_ids.t().cpu() if segment_ids is not None else None,
                        tp_size=parallel_state.get_tensor_model_parallel_world_size(),
                        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                        device=device or next(self.parameters()).device)

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                modality_ids: Optional[torch.Tensor] = None, routing_plan: Optional[RoutingPlan] = None,
                segment_ids: Optional[torch.Tensor] = None, **kwargs):
        """input_ids, labels, modality_ids, segment_ids: [b, s]. Returns losses [b, s] or logits [b, s, V/tp]."""
        plan = routing_plan or self.build_plan(modality_ids, segment_ids, input_ids.device)
        b, s = input_ids.shape

        def grouped(t):  # [b, s] -> the same tokens in grouped order, shaped so Megatron's [b,s]->[s,b] fits
            return plan.group_ids(t.t()).view(s, b).t() if t is not None else None
        rope = rope_cos_sin(plan.position_ids, s, b, self.settings.head_dim, self.mot.rope_theta, input_ids.device)
        params = MoTPackedSeqParams(routing_plan=plan, rope=rope)
        out = super().forward(grouped(input_ids), None, attention_mask, labels=grouped(labels),
                              packed_seq_params=params, **kwargs)
        if not self.post_process:
            return out
        seq = out.transpose(0, 1)                            # [s, b, ...] grouped
        flat = seq.reshape(s * b, *seq.shape[2:])
        return plan.to_sequence(flat).view(seq.shape).transpose(0, 1).contiguous()
