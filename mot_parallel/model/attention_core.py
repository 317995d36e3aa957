"""Causal softmax attention over the whole interleaved sequence (one global attention for all
modalities), with optional document masking for packed sequences. torch SDPA picks flash /
memory-efficient kernels on GPU and the math kernel on CPU; a document mask rules out flash."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: Optional[torch.Tensor] = None,
                   dropout_p: float = 0.0) -> torch.Tensor:
    """q [s, b, hq, d], k/v [s, b, hkv, d] (hq a multiple of hkv) -> [s, b, hq, d].

    mask [b, 1, s, s] bool (routing.document_mask): causal within documents; None = plain causal."""
    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, d]
    kwargs = {}
    if k.shape[1] != q.shape[1]:
        if _SDPA_GQA:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, **kwargs)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, **kwargs)
    return out.permute(2, 0, 1, 3)
