"""Megatron-contract column-parallel linear (the output head): weight [out/tp, in], forward -> (output, bias).

The MoT layers use their per-modality twins (model/grouped_linear.py); this one is the shared output layer.

The constructor accepts Megatron's keywords (`config`, `init_method`, `bias`, `gather_output`,
`skip_bias_add`, `tp_group`, ...). From `config` we read
`sequence_parallel`, `params_dtype`, `perform_initialization` when present (ours or Megatron's
TransformerConfig); an explicit `sequence_parallel=` wins. Extra keywords Megatron passes are ignored.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.collectives import group_rank, group_size
from . import mappings as M
from .param_meta import mark_tp_sharded
from .weight_init import InitMethod, init_sharded_, normal_init


def config_value(config, name: str, default):
    """`config.name` of a Megatron-style config object (ours or Megatron's), or `default` without one."""
    return getattr(config, name, default) if config is not None else default


class ColumnParallelLinear(nn.Module):
    """Y = X A^T with A split by rows (output features). Input [.., in] (or [s/tp, b, in] under SP)."""

    def __init__(self, input_size: int, output_size: int, *, config=None, init_method: Optional[InitMethod] = None,
                 bias: bool = True, gather_output: bool = False, skip_bias_add: bool = False,
                 sequence_parallel: Optional[bool] = None, tp_group=None, init_seed: Optional[int] = None,
                 device=None, params_dtype: Optional[torch.dtype] = None, stride: int = 1, **unused_megatron_kwargs):
        super().__init__()
        if stride != 1:
            raise ValueError("ColumnParallelLinear: interleaved (stride > 1) weights are not supported; fused "
                             "weights are sharded block-wise (model/grouped_linear.py output_blocks)")
        self.tp_group, self.tp_size, self.tp_rank = tp_group, group_size(tp_group), group_rank(tp_group)
        self.input_size, self.output_size, self.skip_bias_add = input_size, output_size, skip_bias_add
        if sequence_parallel is None:
            sequence_parallel = config_value(config, "sequence_parallel", False)
        self.sequence_parallel = bool(sequence_parallel) and self.tp_size > 1
        if gather_output and self.sequence_parallel:
            raise ValueError("ColumnParallelLinear: gather_output with sequence_parallel is not supported")
        self.gather_output = gather_output
        if output_size % self.tp_size:
            raise ValueError(f"ColumnParallelLinear: size {output_size} is not divisible by tensor-parallel "
                             f"size {self.tp_size}")
        dtype = params_dtype or config_value(config, "params_dtype", torch.float32)
        self.weight = nn.Parameter(torch.empty(output_size // self.tp_size, input_size, device=device, dtype=dtype))
        mark_tp_sharded(self.weight, 0, self.tp_size)
        if config_value(config, "perform_initialization", True):
            init_sharded_(self.weight, init_method or normal_init(0.02), (output_size, input_size), 0,
                          self.tp_rank, self.tp_size, init_seed)
        self.bias = None
        if bias:  # sharded with the outputs
            self.bias = nn.Parameter(torch.zeros(output_size // self.tp_size, device=device, dtype=dtype))
            mark_tp_sharded(self.bias, 0, self.tp_size)

    def _bias_out(self):
        return self.bias if self.skip_bias_add else None

    def forward(self, x: torch.Tensor, *, sp_sizes: Optional[Sequence[int]] = None):
        """`sp_sizes`: under SP, every TP rank's dim-0 size when they differ (the routing plan's
        `sp_sizes`; a token count that TP does not divide), as the grouped linears and the embedding take
        it. Without it every rank must hold the same count: the all-gather cannot know other ranks'
        sizes, and unequal pieces fail on gloo and hang or return garbage on NCCL."""
        if self.sequence_parallel:
            x = M.gather_from_sp_region(x, self.tp_group, sp_sizes)
        else:
            x = M.copy_to_tp_region(x, self.tp_group)
        y = F.linear(x, self.weight, None if self.skip_bias_add else self.bias)
        if self.gather_output:
            y = M.gather_from_tp_region(y, self.tp_group)
        return y, self._bias_out()
