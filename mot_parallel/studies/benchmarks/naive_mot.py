"""A benchmark baseline, not for training: the MoT layer written the way the official tutorial code
does it (Algorithm 1 as a Python loop over modalities with boolean masks): for every projection it
builds `mask = modality_ids == m`, gathers `x[mask]`, runs that modality's nn.Linear and scatters the
result back with `out[mask] = ...` (each boolean index is a device->host sync on GPU). Same math as
`MoTLayer` (pre-norm, RMSNorm, SwiGLU, RoPE, causal attention), so it can load its weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...model.attention_core import attention_core
from ...model.rope import apply_rope, rope_cos_sin
from ...model.settings import ModelSettings


class _RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Expert(nn.Module):
    def __init__(self, s: ModelSettings):
        super().__init__()
        h, d = s.hidden_size, s.head_dim
        self.attn_norm, self.ffn_norm = _RMSNorm(h, s.norm_eps), _RMSNorm(h, s.norm_eps)
        self.q = nn.Linear(h, s.num_heads * d, bias=False)
        self.k = nn.Linear(h, s.num_kv_heads * d, bias=False)
        self.v = nn.Linear(h, s.num_kv_heads * d, bias=False)
        self.o = nn.Linear(s.num_heads * d, h, bias=False)
        self.gate = nn.Linear(h, s.ffn_hidden_size, bias=False)
        self.up = nn.Linear(h, s.ffn_hidden_size, bias=False)
        self.down = nn.Linear(s.ffn_hidden_size, h, bias=False)


class NaiveMoTLayer(nn.Module):
    def __init__(self, s: ModelSettings):
        super().__init__()
        self.s = s
        self.experts = nn.ModuleList(_Expert(s) for _ in range(s.num_modalities))

    @torch.no_grad()
    def load_from(self, layer) -> "NaiveMoTLayer":
        """Copy the weights of a TP=1, fully untied `MoTLayer`."""
        s, d = self.s, self.s.head_dim
        att, mlp = layer.self_attention, layer.mlp
        for m, e in enumerate(self.experts):
            q, k, v = att.linear_qkv.weights()[m].split([s.num_heads * d, s.num_kv_heads * d, s.num_kv_heads * d])
            gate, up = mlp.linear_fc1.weights()[m].chunk(2)
            pairs = [(e.q.weight, q), (e.k.weight, k), (e.v.weight, v), (e.o.weight, att.linear_proj.weights()[m]),
                     (e.gate.weight, gate), (e.up.weight, up), (e.down.weight, mlp.linear_fc2.weights()[m]),
                     (e.attn_norm.weight, layer.attn_norm.weights()[m]), (e.ffn_norm.weight, layer.ffn_norm.weights()[m])]
            for dst, src in pairs:
                dst.copy_(src)
        return self

    def _per_modality(self, fn, x, mods, out_dim):
        out = x.new_zeros(x.shape[:-1] + (out_dim,))
        for m, expert in enumerate(self.experts):
            mask = mods == m
            out[mask] = fn(expert, x[mask])
        return out

    def forward(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """x [s, b, h] in sequence order, mods [s, b]."""
        s, (S, B, h), d = self.s, x.shape, self.s.head_dim
        hq, hkv = s.num_heads * d, s.num_kv_heads * d

        def qkv_fn(e, t):
            n = e.attn_norm(t)
            return torch.cat([e.q(n), e.k(n), e.v(n)], dim=-1)

        def ffn_fn(e, t):
            n = e.ffn_norm(t)
            return e.down(F.silu(e.gate(n)) * e.up(n))

        q, k, v = self._per_modality(qkv_fn, x, mods, hq + 2 * hkv).split([hq, hkv, hkv], dim=-1)
        cos, sin = rope_cos_sin(None, S, B, d, s.rope_theta, x.device)
        q = apply_rope(q.reshape(S, B, s.num_heads, d), cos, sin)
        k = apply_rope(k.reshape(S, B, s.num_kv_heads, d), cos, sin)
        ctx = attention_core(q, k, v.reshape(S, B, s.num_kv_heads, d)).reshape(S, B, -1)
        x = x + self._per_modality(lambda e, t: e.o(t), ctx, mods, h)
        return x + self._per_modality(ffn_fn, x, mods, h)
