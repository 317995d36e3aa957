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


def _time_mlp(W, part, name, t, s):
    lin = lambda n, v: W[f"{part}.continuous.{n}.{name}.weight"] @ v + W[f"{part}.continuous.{n}.{name}.bias"]  # noqa: E731
    return lin("time_out", F.silu(lin("time_in", _timestep_features(t, 256, s.diffusion_timesteps))))


def _images(patches, mods, spans, m):
    """{(column, span id): [(position, patch key)] in position order} of modality m's images."""
    out = {}
    for (i, j) in sorted(patches, key=lambda ij: (ij[1], ij[0])):
        if int(mods[i, j]) == m:
            out.setdefault((j, int(spans[i, j])), []).append((i, j))
    return out


def _assemble(vectors, spec):
    """Patch vectors (raster order, values (row, column, channel)) -> [C, H, W], pixel by pixel."""
    gh, gw = spec.grid
    p, ch = spec.patch, spec.channels
    img = torch.zeros(ch, gh * p, gw * p)
    for k, v in enumerate(vectors):
        for r in range(p):
            for q in range(p):
                for c in range(ch):
                    img[c, (k // gw) * p + r, (k % gw) * p + q] = v[(r * p + q) * ch + c]
    return img


def _gn(W, name, v):
    """GroupNorm with 4 channels a group (at most 32 groups), as model/unet.py."""
    return F.group_norm(v, max(1, min(32, v.shape[1] // 4)), W[f"{name}.weight"], W[f"{name}.bias"])


def _resblock(W, pre, x, emb):
    conv = lambda n, v: F.conv2d(v, W[f"{pre}.{n}.weight"], W[f"{pre}.{n}.bias"], padding=1)  # noqa: E731
    scale, shift = (W[f"{pre}.emb.weight"][:, :, 0, 0] @ emb + W[f"{pre}.emb.bias"]).chunk(2)
    h = _gn(W, f"{pre}.norm2", conv("conv1", F.silu(_gn(W, f"{pre}.norm1", x)))) * (1 + scale[:, None, None])
    return x + conv("conv2", F.silu(h + shift[:, None, None]))


def _prime_factors(n):
    """The U-Net's downsampling steps (its layer plan, not what the reference checks): the model's own list."""
    from mot_parallel.model.unet import factors
    return factors(n)


def _unet_down(W, pre, img, emb, patch):
    """One image [C, H, W] -> [hidden, gh, gw] (model/unet.py's down blocks, written out)."""
    x = F.conv2d(img[None], W[f"{pre}.conv_in.weight"], W[f"{pre}.conv_in.bias"], padding=1)
    steps = _prime_factors(patch)
    for k, f in enumerate(steps):
        x = _resblock(W, f"{pre}.res.{k}", x, emb)
        x = F.conv2d(x, W[f"{pre}.down.{k}.weight"], W[f"{pre}.down.{k}.bias"], stride=f)
    x = _resblock(W, f"{pre}.res.{len(steps)}", x, emb)
    return F.conv2d(x, W[f"{pre}.proj.weight"], W[f"{pre}.proj.bias"])[0]


def _unet_up(W, pre, x, emb, patch, noised):
    """Transformer outputs [hidden, gh, gw] + the noised image [C, H, W] -> noise [C, H, W] (the up blocks,
    written out)."""
    steps = _prime_factors(patch)
    x = F.conv2d(x[None], W[f"{pre}.proj.weight"], W[f"{pre}.proj.bias"])
    for k in reversed(range(len(steps))):
        x = _resblock(W, f"{pre}.res.{k + 1}", x, emb)
        x = F.conv_transpose2d(x, W[f"{pre}.up.{k}.weight"], W[f"{pre}.up.{k}.bias"], stride=steps[k])
    x = x + F.conv2d(noised[None], W[f"{pre}.skip.weight"], W[f"{pre}.skip.bias"], padding=1)
    x = _resblock(W, f"{pre}.res.0", x, emb)
    x = F.silu(_gn(W, f"{pre}.norm_out", x))
    x = F.conv2d(x, W[f"{pre}.conv_out.weight"], W[f"{pre}.conv_out.bias"], padding=1)
    return (x + F.conv2d(noised[None], W[f"{pre}.skip_out.weight"], W[f"{pre}.skip_out.bias"]))[0]


def _image_position(s, spec, k):
    """Patch k's (raster index) 2-D sine-cosine position embedding, element by element: a quarter of the width
    each for sin(row w_i), cos(row w_i), sin(col w_i), cos(col w_i), w_i = 10000^(-i / quarter), times
    init_std * sqrt(2 * patch_dim) (model/image_positions.py's scale)."""
    q = s.hidden_size // 4
    row, col = divmod(k, spec.grid[1])
    w = [10000.0 ** (-i / q) for i in range(q)]
    values = [f(a * wi) for a in (row, col) for f in (math.sin, math.cos) for wi in w]
    return torch.tensor(values) * (s.init_std * math.sqrt(2.0 * spec.patch_dim))


def _embed_images(W, s, x, mods, patches, spans):
    """Continuous positions of x [S, B, h] get their patch embedding: linear per patch, or U-Net per image;
    with position_embedding sincos2d, plus the patch's 2-D position in its image."""
    for spec in s.continuous:
        m, name = s.modalities.index(spec.name), spec.name
        images = _images(patches, mods, spans, m).values() if spec.unet or spec.position_embedding != "none" else []
        if not spec.unet:
            for (i, j), (x_t, t, _) in patches.items():
                if int(mods[i, j]) == m:
                    lin = W[f"embedding.continuous.proj.{name}.weight"] @ x_t + W[f"embedding.continuous.proj.{name}.bias"]
                    x[i, j] = lin + _time_mlp(W, "embedding", name, t, s)
        else:
            for keys in images:
                emb = _time_mlp(W, "embedding", name, patches[keys[0]][1], s)
                img = _assemble([patches[k][0] for k in keys], spec)
                out = _unet_down(W, f"embedding.continuous.unet.{name}", img, emb, spec.patch)
                for k, (i, j) in enumerate(keys):
                    x[i, j] = out[:, k // spec.grid[1], k % spec.grid[1]] + emb
        if spec.position_embedding == "sincos2d":
            for keys in images:
                for k, (i, j) in enumerate(keys):
                    x[i, j] = x[i, j] + _image_position(s, spec, k)
    return x


def _predictions(W, s, xn, mods, patches, spans):
    """{(i, j): predicted noise [D]} at every continuous position."""
    preds = {}
    for spec in s.continuous:
        m, name = s.modalities.index(spec.name), spec.name
        if not spec.unet:
            for (i, j) in patches:
                if int(mods[i, j]) == m:
                    preds[(i, j)] = W[f"head.continuous.proj.{name}.weight"] @ xn[i, j] + W[f"head.continuous.proj.{name}.bias"]
            continue
        for keys in _images(patches, mods, spans, m).values():
            emb = _time_mlp(W, "head", name, patches[keys[0]][1], s)
            grid = torch.stack([xn[i, j] for i, j in keys]).t().reshape(-1, *spec.grid)
            noised = _assemble([patches[k][0] for k in keys], spec)
            out = _unet_up(W, f"head.continuous.unet.{name}", grid, emb, spec.patch, noised)
            p, gw = spec.patch, spec.grid[1]
            for k, key in enumerate(keys):
                r, q = (k // gw) * p, (k % gw) * p
                preds[key] = out[:, r:r + p, q:q + p].permute(1, 2, 0).reshape(-1)  # values (row, column, channel)
    return preds


def reference_transfusion(W, s, tokens, mods, labels, label_mods, patches, positions, segments, spans, context):
    """The Transfusion setting, token by token: `patches[(i, j)]` = (x_t [D], t, eps [D]) at every continuous
    position. Embedding: the token's row, or its modality's patch projection + timestep MLP (U-Net: the
    image's patches assembled pixel by pixel, down blocks, one vector per patch + the timestep MLP); head: LM
    loss on discrete targets, per-patch MSE of the noise prediction (U-Net: the image's transformer outputs
    and its noised pixels through the up blocks). Returns per-modality (loss sums, counts)."""
    x = _embed_images(W, s, W["embedding.word_embeddings.weight"][tokens].clone(), mods, patches, spans)
    for n in range(s.num_layers):
        x = reference_layer(W, f"layers.{n}.", s, x, mods, positions, segments, spans, context)
    xn = _final_norm(W, s, x, mods)
    loss_sum, count, _ = _lm_part(W, s, xn, labels, label_mods)
    for key, pred in _predictions(W, s, xn, mods, patches, spans).items():
        m = int(mods[key])
        loss_sum = loss_sum + F.one_hot(torch.tensor(m), s.num_modalities) * (pred - patches[key][2]).pow(2).mean()
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
