"""Rotary position embedding, Llama/HF layout (rotate_half over [first half | second half] of head dim),
which is also Megatron's default (rotary_interleaved=False), so dense checkpoints convert directly.

Frequencies: plain RoPE (theta^(-2i/d)), or Llama-3's scaling (`model.rope_scaling.rope_type: llama3`,
Llama 3.1+): wavelengths shorter than original_max_position_embeddings / high_freq_factor keep their
frequency, those longer than original_max_position_embeddings / low_freq_factor are slowed by `factor`,
and the band between blends the two linearly in 1/wavelength. Other scalings (linear, dynamic NTK, YaRN,
LongRoPE) are refused by config validation and by the Hugging Face conversion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

ROPE_TYPES = ("default", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 frequency scaling (the only scaling supported)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    @classmethod
    def from_config(cls, section) -> Optional["RopeScaling"]:
        """`model.rope_scaling` -> RopeScaling, or None for plain RoPE."""
        if section.rope_type == "default":
            return None
        return cls(section.factor, section.low_freq_factor, section.high_freq_factor,
                   section.original_max_position_embeddings)


def inverse_frequencies(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None,
                        device: Optional[torch.device] = None) -> torch.Tensor:
    """[head_dim / 2] fp32 rotation frequencies."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv
    context = scaling.original_max_position_embeddings
    wavelength = 2 * math.pi / inv
    # 0 at wavelength = context / low_freq_factor (fully slowed), 1 at context / high_freq_factor (unchanged)
    blend = (context / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    mid = (1 - blend) * inv / scaling.factor + blend * inv
    out = torch.where(wavelength > context / scaling.low_freq_factor, inv / scaling.factor, inv)
    in_band = (wavelength >= context / scaling.high_freq_factor) & (wavelength <= context / scaling.low_freq_factor)
    return torch.where(in_band, mid, out)


def rope_cos_sin(position_ids: Optional[torch.Tensor], seq_len: int, batch: int, head_dim: int, theta: float,
                 device: torch.device, scaling: Optional[RopeScaling] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [s, b, 1, head_dim] in fp32; `position_ids` [s, b] (None = 0..s-1)."""
    if position_ids is None:
        position_ids = torch.arange(seq_len, device=device).unsqueeze(1).expand(seq_len, batch)
    inv_freq = inverse_frequencies(head_dim, theta, scaling, device)
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
