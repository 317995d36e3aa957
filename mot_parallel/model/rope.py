"""Rotary position embedding, Llama/HF layout (rotate_half over [first half | second half] of head dim),
which is also Megatron's default (rotary_interleaved=False), so dense checkpoints convert directly."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def rope_cos_sin(position_ids: Optional[torch.Tensor], seq_len: int, batch: int, head_dim: int, theta: float,
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [s, b, 1, head_dim] in fp32; `position_ids` [s, b] (None = 0..s-1)."""
    if position_ids is None:
        position_ids = torch.arange(seq_len, device=device).unsqueeze(1).expand(seq_len, batch)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [s, b, heads, d]."""
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
