"""An independent, obviously-correct MoT: every token picks its own modality's weights one at a time.

No routing plan, no grouped GEMMs, no permutations: per-token matrix-vector products in a Python loop,
then plain causal softmax attention written out. Weights are read from a TP=1 `MoTModel`/`MoTLayer`
(copies, so gradients land on the reference's own leaves).
"""
import math

import torch
import torch.nn.functional as F


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):
    """x [heads, d] at integer position pos (rotate-half layout)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.cat([pos * inv, pos * inv])
    a, b = x.chunk(2, -1)
    return x * ang.cos() + torch.cat([-b, a], -1) * ang.sin()


def leaf_copies(module):
    return {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}


def reference_layer(W, prefix, s, x, mods, positions=None, segments=None):
    """x [S, B, h] sequence order, mods [S, B] -> [S, B, h]; W: name -> leaf tensor (TP=1 layout)."""
    S, B, h = x.shape
    H, KV, d = s.num_heads, s.num_kv_heads, s.head_dim
    def w(name, part, m):
        """This token's copy: `<name>.<modality>` when `part` is untied, else the shared `<name>`."""
        return W[f"{prefix}{name}.{s.modalities[m]}"] if part in s.untie else W[prefix + name]
    out = torch.empty(S, B, h)
    for j in range(B):
        q, k, v = [], [], []
        for i in range(S):
            m = int(mods[i, j])
            xi = x[i, j]
            xin = _rms(xi, w("attn_norm.weight", "norms", m), s.norm_eps) if s.norm_placement == "pre" else xi
            qkv = w("self_attention.linear_qkv.weight", "attention", m) @ xin
            qi, ki, vi = qkv.split([H * d, KV * d, KV * d])
            qi, ki, vi = qi.view(H, d), ki.view(KV, d), vi.view(KV, d)
            if s.qk_norm:
                qi = _rms(qi, w("self_attention.q_layernorm.weight", "attention", m), s.norm_eps)
                ki = _rms(ki, w("self_attention.k_layernorm.weight", "attention", m), s.norm_eps)
            pos = i if positions is None else int(positions[i, j])
            q.append(_rope(qi, pos, s.rope_theta))
            k.append(_rope(ki, pos, s.rope_theta))
            v.append(vi)
        q, k, v = torch.stack(q), torch.stack(k), torch.stack(v)  # [S, heads, d]
        rows = []
        for i in range(S):
            m = int(mods[i, j])
            heads = []
            for hh in range(H):
                kvh = hh // (H // KV)
                allowed = [t for t in range(i + 1) if segments is None or segments[t, j] == segments[i, j]]
                scores = torch.stack([q[i, hh] @ k[t, kvh] for t in allowed]) / math.sqrt(d)
                p = torch.softmax(scores, 0)
                heads.append(sum(p[n] * v[t, kvh] for n, t in enumerate(allowed)))
            o = w("self_attention.linear_proj.weight", "attention", m) @ torch.cat(heads)
            xi = x[i, j]
            if s.norm_placement == "pre":
                hi = xi + o
                f_in = _rms(hi, w("ffn_norm.weight", "norms", m), s.norm_eps)
            else:
                hi = xi + _rms(o, w("attn_norm.weight", "norms", m), s.norm_eps)
                f_in = hi
            gate, up = (w("mlp.linear_fc1.weight", "ffn", m) @ f_in).chunk(2)
            f = w("mlp.linear_fc2.weight", "ffn", m) @ (F.silu(gate) * up)
            if s.norm_placement == "post":
                f = _rms(f, w("ffn_norm.weight", "norms", m), s.norm_eps)
            rows.append(hi + f)
        out[:, j] = torch.stack(rows)
    return out


def reference_model(W, s, tokens, mods, labels, label_mods, positions=None, segments=None):
    """Full model: embedding -> layers -> final norm (per token) -> head -> CE; per-modality sums."""
    x = W["embedding.word_embeddings.weight"][tokens]
    for n in range(s.num_layers):
        x = reference_layer(W, f"layers.{n}.", s, x, mods, positions, segments)
    def fn(m):
        return W[f"head.final_norm.weight.{s.modalities[m]}"] if s.untie_final_norm else W["head.final_norm.weight"]
    xn = torch.stack([torch.stack([_rms(x[i, j], fn(int(mods[i, j])), s.norm_eps)
                                   for j in range(x.shape[1])]) for i in range(x.shape[0])])
    logits = xn @ W.get("head.output_layer.weight", W["embedding.word_embeddings.weight"]).t()
    losses = F.cross_entropy(logits[..., :s.vocab_size].reshape(-1, s.vocab_size), labels.reshape(-1),
                             reduction="none", ignore_index=-100)
    valid = (labels.reshape(-1) != -100).float()
    m = label_mods.reshape(-1)
    loss_sum = torch.stack([(losses * valid * (m == k)).sum() for k in range(s.num_modalities)])
    count = torch.stack([(valid * (m == k)).sum() for k in range(s.num_modalities)])
    return loss_sum, count, logits
