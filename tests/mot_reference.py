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


def allowed_keys(i, j, S, segments=None, spans=None, context=None):
    """Keys query (i, column j) attends: causal within its document, every token of its own span (an image,
    bidirectional), and none before its context start (a condition-dropped image's BOI)."""
    out = []
    for t in range(S):
        if segments is not None and segments[t, j] != segments[i, j]:
            continue
        same_span = spans is not None and spans[i, j] >= 0 and spans[t, j] == spans[i, j]
        if t > i and not same_span:
            continue
        if context is not None and context[i, j] >= 0 and t < context[i, j]:
            continue
        out.append(t)
    return out


def reference_layer(W, prefix, s, x, mods, positions=None, segments=None, spans=None, context=None):
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
                allowed = allowed_keys(i, j, S, segments, spans, context)
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
    return _lm_part(W, s, _final_norm(W, s, x, mods), labels, label_mods)


def _timestep_features(t, dim, timesteps):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = float(t) * (1000.0 / timesteps) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)])


def reference_transfusion(W, s, tokens, mods, labels, label_mods, patches, positions, segments, spans, context):
    """The Transfusion setting, token by token: `patches[(i, j)]` = (x_t [D], t, eps [D]) at every continuous
    position. Embedding: the token's row, or its modality's patch projection + timestep MLP; head: LM loss
    on discrete targets, per-patch MSE of the noise prediction. Returns per-modality (loss sums, counts)."""
    x = W["embedding.word_embeddings.weight"][tokens].clone()
    for (i, j), (x_t, t, _) in patches.items():
        name = s.modalities[int(mods[i, j])]
        lin = lambda n, v: W[f"embedding.continuous.{n}.{name}.weight"] @ v + W[f"embedding.continuous.{n}.{name}.bias"]  # noqa: E731
        feat = _timestep_features(t, 256, s.diffusion_timesteps)
        x[i, j] = lin("proj", x_t) + lin("time_out", F.silu(lin("time_in", feat)))
    for n in range(s.num_layers):
        x = reference_layer(W, f"layers.{n}.", s, x, mods, positions, segments, spans, context)
    xn = _final_norm(W, s, x, mods)
    loss_sum, count, _ = _lm_part(W, s, xn, labels, label_mods)
    for (i, j), (_, _, eps) in patches.items():
        m = int(mods[i, j])
        name = s.modalities[m]
        pred = W[f"head.continuous.proj.{name}.weight"] @ xn[i, j] + W[f"head.continuous.proj.{name}.bias"]
        loss_sum = loss_sum + F.one_hot(torch.tensor(m), s.num_modalities) * (pred - eps).pow(2).mean()
        count = count + F.one_hot(torch.tensor(m), s.num_modalities).float()
    return loss_sum, count


def _final_norm(W, s, x, mods):
    """The head's RMSNorm, token by token (its modality's copy when untie_final_norm)."""
    def weight(m):
        return W[f"head.final_norm.weight.{s.modalities[m]}"] if s.untie_final_norm else W["head.final_norm.weight"]
    return torch.stack([torch.stack([_rms(x[i, j], weight(int(mods[i, j])), s.norm_eps) for j in range(x.shape[1])])
                        for i in range(x.shape[0])])


def _lm_part(W, s, xn, labels, label_mods):
    logits = xn @ W.get("head.output_layer.weight", W["embedding.word_embeddings.weight"]).t()
    losses = F.cross_entropy(logits[..., :s.vocab_size].reshape(-1, s.vocab_size), labels.reshape(-1),
                             reduction="none", ignore_index=-100)
    valid = (labels.reshape(-1) != -100).float()
    m = label_mods.reshape(-1)
    loss_sum = torch.stack([(losses * valid * (m == k)).sum() for k in range(s.num_modalities)])
    count = torch.stack([(valid * (m == k)).sum() for k in range(s.num_modalities)])
    return loss_sum, count, logits
