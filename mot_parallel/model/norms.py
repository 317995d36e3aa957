"""RMSNorm with one weight per modality (`weight.<modality>`), or one shared `weight` (the dense path).

Under sequence parallelism each TP rank normalises different tokens, so the replicated weight's
gradient is partial: it carries Megatron's `sequence_parallel` tag and is summed over the TP group by
`tensor_parallel.grad_sync` (ours) or `finalize_model_grads` (Megatron's).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from ..tensor_parallel.param_meta import mark_sequence_parallel, mark_tp_partial_grad, set_modality
from .grouped_ops import grouped_rms_norm, rms_norm


class ModalityRMSNorm(nn.Module):
    def __init__(self, dim: int, modalities: Optional[Sequence[str]] = None, eps: float = 1e-5, *,
                 sequence_parallel: bool = False, tp_partial_grad: bool = False,
                 params_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.modalities, self.eps = (list(modalities) if modalities else None), eps

        def make(name):
            p = nn.Parameter(torch.ones(dim, dtype=params_dtype, device=device))
            if sequence_parallel:
                mark_sequence_parallel(p)
            if tp_partial_grad:  # e.g. QK-norm: shared over heads that are split across TP ranks
                mark_tp_partial_grad(p)
            set_modality(p, name)
            return p
        self.weight = make(None) if self.modalities is None else nn.ParameterDict({m: make(m) for m in self.modalities})

    def weights(self) -> List[torch.Tensor]:
        return [self.weight] if self.modalities is None else [self.weight[m] for m in self.modalities]

    def forward(self, x: torch.Tensor, counts: Optional[Sequence[int]] = None) -> torch.Tensor:
        if self.modalities is None:
            return rms_norm(x, self.weight, self.eps)
        return grouped_rms_norm(x, self.weights(), counts, self.eps)
