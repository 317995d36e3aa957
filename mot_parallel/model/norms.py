"""RMSNorm with one weight row per modality ([G, dim]); G = 1 is a plain RMSNorm (the dense path).

Under sequence parallelism each TP rank normalises different tokens, so the replicated weight's
gradient is partial: it carries Megatron's `sequence_parallel` tag and is summed over the TP group by
`tensor_parallel.grad_sync` (ours) or `finalize_model_grads` (Megatron's).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .grouped_ops import grouped_rms_norm, rms_norm


class ModalityRMSNorm(nn.Module):
    def __init__(self, dim: int, num_groups: int = 1, eps: float = 1e-5, *, sequence_parallel: bool = False,
                 tp_partial_grad: bool = False, params_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.num_groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_groups, dim, dtype=params_dtype, device=device))
        if sequence_parallel:
            self.weight.sequence_parallel = True
        if tp_partial_grad:  # e.g. QK-norm: shared over heads that are split across TP ranks
            self.weight.tp_partial_grad = True

    def forward(self, x: torch.Tensor, counts: Optional[Sequence[int]] = None) -> torch.Tensor:
        if self.num_groups == 1:
            return rms_norm(x, self.weight[0], self.eps)
        return grouped_rms_norm(x, self.weight, counts, self.eps)
