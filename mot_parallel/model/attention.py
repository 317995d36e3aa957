"""MoT self-attention: per-modality W_QKV / W_O (and QK-norms), one global causal attention.

Input and output are flat [tokens, h] in the plan's grouped order (this rank's SP shard under SP).
Permutations per forward: exactly two, both here -
  1. q, k, v (grouped order) -> sequence order, because causal attention, RoPE positions and
     document masks are defined on sequence positions;
  2. the attention context (sequence order) -> grouped order, because W_O is per modality.
That is the minimum: per-modality GEMMs need tokens contiguous by modality and the attention kernel
needs them contiguous by position, and the stream crosses between the two twice (in and out of the
attention core). Backward mirrors them (two gathers by the inverse permutation). Everything else in
the layer (norms, FFN, residual adds, SP collectives) works in grouped order.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from ..tensor_parallel.weight_init import SeededInit, normal_init, param_seed, scaled_normal_init
from .attention_core import attention_core
from .grouped_linear import GroupedColumnParallelLinear, GroupedRowParallelLinear
from .norms import ModalityRMSNorm
from .rope import apply_rope
from .routing import RoutingPlan
from .settings import ModelSettings


class MoTSelfAttention(nn.Module):
    def __init__(self, settings: ModelSettings, layer_number: int, parallel: ParallelContext = SINGLE_PROCESS,
                 rng_tracker=None, device=None):
        super().__init__()
        s, tp = settings, parallel.tp_size
        self.settings, self.rng_tracker = s, rng_tracker
        self.copies = s.copies("attention")
        d = s.head_dim
        self.heads, self.kv_heads = s.num_heads // tp, s.num_kv_heads // tp
        seed = param_seed(s.seed, f"layers.{layer_number}.self_attention")
        self.linear_qkv = GroupedColumnParallelLinear(
            s.hidden_size, [s.num_heads * d, s.num_kv_heads * d, s.num_kv_heads * d], self.copies, parallel=parallel,
            config=s, init=SeededInit(normal_init(s.init_std), param_seed(seed, "linear_qkv")), bias=s.qkv_bias,
            device=device)
        out_init = scaled_normal_init(s.init_std, s.num_layers) if s.scale_output_by_depth else normal_init(s.init_std)
        self.linear_proj = GroupedRowParallelLinear(
            s.num_heads * d, s.hidden_size, self.copies, parallel=parallel, config=s,
            init=SeededInit(out_init, param_seed(seed, "linear_proj")), device=device)
        self.q_layernorm = self.k_layernorm = None
        self.logit_probe = None  # armed by training/diagnostics.py on logging steps only (logging.diagnostics)
        if s.qk_norm:  # names match Megatron's, whose finalize_model_grads sums these over TP by name
            kw = dict(tp_partial_grad=tp > 1, params_dtype=s.params_dtype, device=device)
            self.q_layernorm = ModalityRMSNorm(d, self.copies, s.norm_eps, **kw)
            self.k_layernorm = ModalityRMSNorm(d, self.copies, s.norm_eps, **kw)

    def arm_logit_probe(self, probe) -> None:
        """The attention's one runtime switch: `probe(q, k, mask, plan)` sees each forward's post-norm q and k
        (diagnostics' max-logit measurement), or nothing when None (the default: it costs nothing)."""
        self.logit_probe = probe

    def forward(self, x: torch.Tensor, plan: RoutingPlan, rope: Tuple[torch.Tensor, torch.Tensor]):
        (q, k, v), _ = self.linear_qkv.forward_blocks(x, plan)  # all tokens (after the SP all-gather)
        n, d = q.shape[0], self.settings.head_dim
        q, k, v = q.view(n, self.heads, d), k.view(n, self.kv_heads, d), v.view(n, self.kv_heads, d)
        if self.q_layernorm is not None:
            counts = plan.gathered_counts if self.copies else None
            q, k = self.q_layernorm(q, counts), self.k_layernorm(k, counts)
        shape = (plan.seq_len, plan.batch)
        q, k, v = (plan.to_sequence(t).view(shape + t.shape[1:]) for t in (q, k, v))  # permutation 1
        cos, sin = rope
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        p = self.settings.attention_dropout if self.training else 0.0
        mask = plan.attention_mask if self.settings.document_masking else None
        if self.logit_probe is not None:
            self.logit_probe(q, k, mask, plan)
        if p > 0 and self.rng_tracker is not None:
            with self.rng_tracker.fork():  # heads differ per TP rank: per-rank dropout stream
                ctx = attention_core(q, k, v, mask=mask, dropout_p=p)
        else:
            ctx = attention_core(q, k, v, mask=mask, dropout_p=p)
        ctx = plan.to_grouped(ctx.reshape(n, self.heads * d))  # permutation 2
        return self.linear_proj(ctx, plan)
