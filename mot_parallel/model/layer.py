"""One MoT transformer layer: per-modality norms, attention projections and FFN; global attention.

    pre  (Llama/BAGEL):       h = x + Attn(Norm_attn(x));    out = h + FFN(Norm_ffn(h))
    post (paper Eq. 1-3):     h = x + Norm_attn(Attn(x));    out = h + Norm_ffn(FFN(h))

Contract (Megatron's): hidden states [s, b, h], or [s/tp, b, h] under sequence parallelism, returned in
the same shape and never as a view of the input. When routing is active the tokens inside that tensor
are in the plan's grouped order (flattened s-major); the routing plan arrives as an explicit argument,
so activation recompute and pipeline stages see exactly the plan of their micro-batch.
TP collectives per layer = a dense Megatron layer's, whatever the number of modalities:
  SP off: all-reduce after W_O and after FFN down (fwd); after QKV and FFN up inputs (bwd)
  SP on : all-gather before QKV and FFN up, reduce-scatter after W_O and FFN down (mirrored in bwd)
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from .attention import MoTSelfAttention
from .ffn import MoTSwiGLU
from .norms import ModalityRMSNorm
from .routing import RoutingPlan
from .settings import ModelSettings


class MoTLayer(nn.Module):
    def __init__(self, settings: ModelSettings, layer_number: int, parallel: ParallelContext = SINGLE_PROCESS,
                 rng_tracker=None, device=None):
        super().__init__()
        s = self.settings = settings
        self.layer_number, self.rng_tracker = layer_number, rng_tracker
        self.norm_copies = s.copies("norms")
        self.sequence_parallel = parallel.sequence_parallel
        kw = dict(sequence_parallel=self.sequence_parallel, params_dtype=s.params_dtype, device=device)
        self.attn_norm = ModalityRMSNorm(s.hidden_size, self.norm_copies, s.norm_eps, **kw)
        self.self_attention = MoTSelfAttention(s, layer_number, parallel, rng_tracker, device)
        self.ffn_norm = ModalityRMSNorm(s.hidden_size, self.norm_copies, s.norm_eps, **kw)
        self.mlp = MoTSwiGLU(s, layer_number, parallel, device)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.settings.hidden_dropout if self.training else 0.0
        if p == 0.0:
            return x
        if self.sequence_parallel and self.rng_tracker is not None:
            with self.rng_tracker.fork():  # SP shards hold different tokens on each TP rank
                return F.dropout(x, p)
        return F.dropout(x, p)

    def forward(self, hidden_states: torch.Tensor, plan: RoutingPlan,
                rope: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        counts = plan.stream_counts if self.norm_copies else None
        if self.settings.norm_placement == "pre":
            a, _ = self.self_attention(self.attn_norm(x, counts), plan, rope)
            x = x + self._dropout(a)
            f, _ = self.mlp(self.ffn_norm(x, counts), plan)
            f = self._dropout(f)
        else:
            a, _ = self.self_attention(x, plan, rope)
            x = x + self._dropout(self.attn_norm(a, counts))
            f, _ = self.mlp(x, plan)
            f = self._dropout(self.ffn_norm(f, counts))
        return x.view(shape) + f.view(shape)  # the add makes a fresh (viewless) tensor, as Megatron requires
