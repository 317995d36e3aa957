"""Softmax attention over the whole interleaved sequence (one global attention for all modalities).

The mask says which kernel runs (the choice itself is made once per micro-batch, when the mask is built:
attention_mask.choose_kernel):
  - None: plain causal attention, SDPA with is_causal (flash kernel on GPU);
  - AttentionMask with a FlexAttention BlockMask: block-sparse FlexAttention (compiled on the accelerator,
    eager on CPU, where it is the reference implementation), documents and bidirectional spans;
  - AttentionMask without one, or a [b, 1, s, s] bool tensor: SDPA with the dense mask.
Attention dropout needs SDPA (FlexAttention has none): a flex mask then falls back to its dense form.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..distributed import device as dev
from .attention_mask import AttentionMask

_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")
_compiled_flex = None


def _flex(device: torch.device):
    """Eager flex_attention on CPU (materialises scores; tests), compiled once on the accelerator."""
    global _compiled_flex  # one compiled kernel per process, shared by every layer
    from torch.nn.attention.flex_attention import flex_attention
    if not dev.is_accelerator(device):
        return flex_attention
    if _compiled_flex is None:  # automatic dynamic shapes: static for training's fixed shapes; a new length
        _compiled_flex = torch.compile(flex_attention)  # (inference) recompiles once with dynamic shapes
    return _compiled_flex


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   mask: Optional[Union[AttentionMask, torch.Tensor]] = None,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """q [s, b, hq, d], k/v [s, b, hkv, d] (hq a multiple of hkv) -> [s, b, hq, d]."""
    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, d]
    gqa = k.shape[1] != q.shape[1]
    if isinstance(mask, AttentionMask) and mask.block_mask is not None and dropout_p == 0.0:
        out = _flex(q.device)(q, k, v, block_mask=mask.block_mask, enable_gqa=gqa)
        return out.permute(2, 0, 1, 3)
    kwargs = {}
    if gqa:
        if _SDPA_GQA:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, **kwargs)
    else:
        dense = mask.dense() if isinstance(mask, AttentionMask) else mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, dropout_p=dropout_p, **kwargs)
    return out.permute(2, 0, 1, 3)
