"""Megatron's call contracts for the MoT layer and model: their keywords parsed and checked in one place.

TransformerBlock calls every layer with keywords (hidden_states, attention_mask, context, context_mask,
rotary_pos_emb / _cos / _sin / _cos_sin, attention_bias, inference_context, packed_seq_params,
sequence_len_offset, padding_mask, ...), and GPTModel.forward takes (input_ids, position_ids, attention_mask,
decoder_input, labels, inference_context, packed_seq_params, extra_block_kwargs, runtime_gather_output, *,
inference_params, loss_mask, padding_mask). MoTTransformerLayer and MoTGPTModel name the first of these;
the rest arrive as keywords, and each is used, handed on to GPTModel.forward (the keywords the installed
release's forward takes), or accepted only when off (None, as Megatron passes it when unused). Any other
value is refused by name with the fix, never ignored; so is a keyword neither Megatron nor MoT defines.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from megatron.core.models.gpt import GPTModel

_NO_KV_CACHE = "MoT has no KV cache (a training layer): run full sequences without it"
_ROPE = "MoT applies RoPE inside its layers from the routing plan's positions (packed_seq_params.rope)"

# TransformerLayer keyword -> why MoT refuses anything but None
LAYER_REFUSED = {
    "attention_mask": "the MoT layer takes its mask from the routing plan (plan.attention_mask; MoTGPTModel "
                      "folds the caller's attention_mask into it)",
    "context": "a decoder-only layer has no cross-attention",
    "context_mask": "a decoder-only layer has no cross-attention",
    "attention_bias": "MoT attention takes no additive bias",
    "rotary_pos_emb": _ROPE, "rotary_pos_cos": _ROPE, "rotary_pos_sin": _ROPE, "rotary_pos_cos_sin": _ROPE,
    "inference_context": _NO_KV_CACHE, "inference_params": _NO_KV_CACHE, "sequence_len_offset": _NO_KV_CACHE,
    "dynamic_inference_decode_only": _NO_KV_CACHE,
}
# TransformerLayer keywords MoT accepts with any value, and why that changes nothing
LAYER_INERT = {"padding_mask": "Megatron routes MoE tokens with it; a dense (and MoT) layer has no router"}

# GPTModel.forward keyword -> why MoTGPTModel refuses anything but None
MODEL_REFUSED = {
    "inference_context": _NO_KV_CACHE, "inference_params": _NO_KV_CACHE,
    "packed_seq_params": "MoTGPTModel builds packed_seq_params itself (they carry the routing plan); THD packing "
                         "is not supported: pass segment_ids [b, s] for document masking instead",
}
MOT_KEYWORDS = ("modality_ids", "segment_ids", "routing_plan")
# GPTModel.forward's parameters MoTGPTModel sets itself (in grouped order) rather than handing on
_MODEL_OWN = ("self", "input_ids", "position_ids", "attention_mask", "decoder_input", "labels", *MODEL_REFUSED)


def _refuse(who: str, name: str, why: str):
    raise ValueError(f"{who} does not support {name}: {why}; call it without {name} (or with {name}=None)")


def layer_packed_seq_params(keywords: Dict[str, object]):
    """The packed_seq_params of a TransformerLayer call (they carry the routing plan and RoPE tables), after
    checking every other keyword of the call."""
    for name, value in keywords.items():
        if name == "packed_seq_params" or name in LAYER_INERT or value is None:
            continue
        _refuse("MoTTransformerLayer", name, LAYER_REFUSED.get(name, "not a keyword of Megatron's TransformerLayer"))
    packed = keywords.get("packed_seq_params")
    if getattr(packed, "routing_plan", None) is None:
        raise ValueError("MoTTransformerLayer needs the routing plan in packed_seq_params "
                         "(MoTPackedSeqParams); run it through MoTGPTModel or build one with build_routing_plan")
    return packed


@dataclass(frozen=True)
class ModelCall:
    """The keywords of a MoTGPTModel call beyond its named arguments: MoT's own, and the rest for GPTModel."""
    modality_ids: Optional[torch.Tensor]
    segment_ids: Optional[torch.Tensor]
    routing_plan: object
    gpt_keywords: Dict[str, object]   # for GPTModel.forward (extra_block_kwargs, loss_mask, ...)


def model_call(keywords: Dict[str, object]) -> ModelCall:
    """Split and check the keywords of a MoTGPTModel.forward call."""
    gpt_takes = set(inspect.signature(GPTModel.forward).parameters) - set(_MODEL_OWN)
    gpt = {}
    for name, value in keywords.items():
        if name in MOT_KEYWORDS:
            continue
        if name in gpt_takes:
            gpt[name] = value
        elif value is not None:
            _refuse("MoTGPTModel", name, MODEL_REFUSED.get(
                name, f"not a keyword of GPTModel.forward in this megatron-core (it takes {sorted(gpt_takes)}) "
                      f"nor of MoT ({list(MOT_KEYWORDS)})"))
    return ModelCall(keywords.get("modality_ids"), keywords.get("segment_ids"), keywords.get("routing_plan"), gpt)
