"""Parameter and FLOP accounting, MoT counted as its dense equivalent (the paper's §6.1).

Each token passes through exactly one copy of every untied part, so FLOPs per token equal the dense
model's; parameters grow by (M - 1) x the untied parts (7(M-1)D^2 per layer with the paper's 3D^2 FFN
and D x D projections). MFU must use the active (dense-equivalent) count.

Forward FLOPs per token and layer (Megatron's convention, 2 per multiply-add):
  projections   2 * (h*(hq + 2 hkv)*d + hq*d*h)        (GQA shrinks K and V)
  attention     2 * 2 * s * hq * d / 2                (QK^T and AV; causal masking halves them)
  SwiGLU        2 * 3 * h * ffn
plus the output head 2 * h * V. Training = 3 x forward, 4 x with full activation recompute.
"""
from __future__ import annotations

import math
from typing import Dict

from .model.continuous import TIME_FEATURES
from .model.settings import ModelSettings
from .model.unet import unet_flops, unet_param_shapes


def attention_matrix_params(s: ModelSettings) -> int:
    """W_Q, W_K, W_V (GQA: fewer K/V heads) and W_O of one copy, without the QK-norms."""
    d, h = s.head_dim, s.hidden_size
    return h * (s.num_heads + 2 * s.num_kv_heads) * d + s.num_heads * d * h


def qk_norm_params(s: ModelSettings) -> int:
    return 2 * s.head_dim if s.qk_norm else 0


def qkv_bias_params(s: ModelSettings) -> int:
    return (s.num_heads + 2 * s.num_kv_heads) * s.head_dim if s.qkv_bias else 0


def part_params(s: ModelSettings) -> Dict[str, int]:
    """Parameters of ONE copy of each untie-able part of one layer."""
    h = s.hidden_size
    return {"attention": attention_matrix_params(s) + qkv_bias_params(s) + qk_norm_params(s),
            "ffn": 3 * h * s.ffn_hidden_size, "norms": 2 * h}


def _time_mlp_params(h: int) -> int:
    return TIME_FEATURES * h + h + h * h + h


def continuous_params(s: ModelSettings) -> Dict[str, int]:
    """Parameters of the continuous modalities' projections (model/continuous.py, replicated over TP):
    in = patch projection (or U-Net down blocks) + timestep MLP (256 features -> h -> h), out = noise
    prediction (or U-Net up blocks + their own timestep MLP), biases and GroupNorms included."""
    h = s.hidden_size
    embed = head = 0
    for c in s.continuous:
        embed += _time_mlp_params(h)
        if c.unet:
            shapes = lambda up: unet_param_shapes("u", c.channels, c.patch, c.unet_channels, h, up).values()  # noqa: E731
            embed += sum(math.prod(v) for v in shapes(False))
            head += sum(math.prod(v) for v in shapes(True)) + _time_mlp_params(h)
        else:
            embed += c.patch_dim * h + h
            head += h * c.patch_dim + c.patch_dim
    return {"embedding": embed, "head": head}


def continuous_flops_per_token(s: ModelSettings, c) -> float:
    """Forward FLOPs a token of continuous modality `c` adds to the transformer's (its share of its image's
    in and out paths; the LM head still runs on every token): a linear encoder's two projections and its
    per-patch timestep MLP, or a U-Net's down and up convolutions and two timestep MLPs per image."""
    h = s.hidden_size
    time_mlp = 2 * (TIME_FEATURES * h + h * h)
    if not c.unet:
        return 2 * c.patch_dim * h + time_mlp + 2 * h * c.patch_dim
    paths = sum(unet_flops(c.channels, c.patch, c.unet_channels, h, c.grid, up) for up in (False, True))
    return (paths + 2 * time_mlp) / c.num_patches


def param_counts(s: ModelSettings, padded_vocab: bool = True) -> Dict[str, int]:
    """total: every parameter as the model holds them; active: those one token uses (dense-equivalent)."""
    parts = part_params(s)
    vocab = s.padded_vocab(1) if padded_vocab else s.vocab_size
    layer_total = sum(n * s.groups(p) for p, n in parts.items())
    layer_active = sum(parts.values())
    embed = vocab * s.hidden_size
    head = 0 if s.tie_embeddings else vocab * s.hidden_size
    final = s.hidden_size * (s.num_modalities if s.untie_final_norm else 1)
    cont = continuous_params(s)
    extra = cont["embedding"] + cont["head"]
    return {
        "layer_total": layer_total, "layer_active": layer_active,
        "embedding": embed, "head": head, "final_norm": final, "continuous": extra,
        "total": s.num_layers * layer_total + embed + head + final + extra,
        "active": s.num_layers * layer_active + embed + head + s.hidden_size + extra,
        "mot_extra_per_layer": layer_total - layer_active,
    }


def forward_flops_per_token(s: ModelSettings, seq_len: int, causal: bool = True) -> Dict[str, float]:
    d, h = s.head_dim, s.hidden_size
    proj = 2 * attention_matrix_params(s)
    attn = 2 * 2 * seq_len * s.num_heads * d * (0.5 if causal else 1.0)
    ffn = 2 * 3 * h * s.ffn_hidden_size
    head = 2 * h * s.padded_vocab(1)
    layer = proj + attn + ffn
    # continuous tokens also pass their modality's in and out paths (the LM head still runs on every token)
    cont = max((continuous_flops_per_token(s, c) for c in s.continuous), default=0)
    return {"layer": layer, "layer_gemm": proj + ffn, "layer_attention": attn, "head": head,
            "continuous_token_extra": cont, "total": s.num_layers * layer + head}


def training_flops_per_token(s: ModelSettings, seq_len: int, recompute: bool = False) -> float:
    """fwd + bwd (2 x fwd) [+ a second fwd with full activation recompute]."""
    f = forward_flops_per_token(s, seq_len)["total"]
    return f * (4.0 if recompute else 3.0)

