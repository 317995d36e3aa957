"""Megatron-contract tensor-parallel linears: weight [out/tp, in] / [out, in/tp], forward -> (output, bias).

Constructors accept Megatron's keywords (`config`, `init_method`, `bias`, `gather_output`,
`input_is_parallel`, `skip_bias_add`, `stride`, `tp_group`, ...). From `config` we read
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
from .init import InitMethod, init_sharded_, normal_init, set_tp_attributes


def config_value(config, name: str, default):
    """`config.name` of a Megatron-style config object (ours or Megatron's), or `default` without one."""
    return getattr(config, name, default) if config is not None else default



class _ParallelLinear(nn.Module):
    def __init__(self, input_size: int, output_size: int, partition_dim: int, *, config=None,
                 init_method: Optional[InitMethod] = None, bias: bool = True, stride: int = 1,
                 skip_bias_add: bool = False, sequence_parallel: Optional[bool] = None, tp_group=None,
                 init_seed: Optional[int] = None, device=None, params_dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.tp_group, self.tp_size, self.tp_rank = tp_group, group_size(tp_group), group_rank(tp_group)
        self.input_size, self.output_size, self.skip_bias_add = input_size, output_size, skip_bias_add
        if sequence_parallel is None:
            sequence_parallel = config_value(config, "sequence_parallel", False)
        self.sequence_parallel = bool(sequence_parallel) and self.tp_size > 1
        dtype = params_dtype or config_value(config, "params_dtype", torch.float32)
        full = (output_size, input_size)
        if full[partition_dim] % self.tp_size:
            raise ValueError(f"{type(self).__name__}: size {full[partition_dim]} is not divisible by "
                             f"tensor-parallel size {self.tp_size}")
        local = list(full)
        local[partition_dim] //= self.tp_size
        self.weight = nn.Parameter(torch.empty(local, device=device, dtype=dtype))
        set_tp_attributes(self.weight, self.tp_size > 1, partition_dim, stride)
        if config_value(config, "perform_initialization", True):
            init_sharded_(self.weight, init_method or normal_init(0.02), full, partition_dim,
                          self.tp_rank, self.tp_size, stride, init_seed)
        self.bias = None
        if bias:
            bias_parallel = partition_dim == 0  # column-parallel bias is sharded with the outputs
            n = output_size // self.tp_size if bias_parallel else output_size
            self.bias = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
            set_tp_attributes(self.bias, bias_parallel and self.tp_size > 1, 0 if bias_parallel else -1, stride)
            if not bias_parallel and self.sequence_parallel:
                self.bias.sequence_parallel = True  # replicated, but each rank sees different tokens

    def _bias_out(self):
        return self.bias if self.skip_bias_add else None


class ColumnParallelLinear(_ParallelLinear):
    """Y = X A^T with A split by rows (output features). Input [.., in] (or this rank's dim-0 piece under
    SP, `sp_sizes` giving every rank's piece when uneven)."""

    def __init__(self, input_size: int, output_size: int, *, gather_output: bool = False, **kwargs):
        for unused in ("is_expert", "tp_comm_buffer_name", "keep_master_weight_for_test",
                       "skip_weight_param_allocation", "embedding_activation_buffer", "grad_output_buffer",
                       "disable_grad_reduce"):
            kwargs.pop(unused, None)
        super().__init__(input_size, output_size, 0, **kwargs)
        if gather_output and self.sequence_parallel:
            raise ValueError("ColumnParallelLinear: gather_output with sequence_parallel is not supported")
        self.gather_output = gather_output

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


class RowParallelLinear(_ParallelLinear):
    """Y = X A^T with A split by columns (input features); partial sums reduced (or reduce-scattered)."""

    def __init__(self, input_size: int, output_size: int, *, input_is_parallel: bool = True, **kwargs):
        for unused in ("is_expert", "tp_comm_buffer_name", "keep_master_weight_for_test"):
            kwargs.pop(unused, None)
        super().__init__(input_size, output_size, 1, **kwargs)
        if self.sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear: sequence_parallel requires input_is_parallel=True")
        self.input_is_parallel = input_is_parallel

    def forward(self, x: torch.Tensor):
        if not self.input_is_parallel:
            x = M.scatter_to_tp_region(x, self.tp_group)
        y = F.linear(x, self.weight)
        y = (M.reduce_scatter_to_sp_region(y, self.tp_group) if self.sequence_parallel
             else M.reduce_from_tp_region(y, self.tp_group))
        if self.bias is not None and not self.skip_bias_add:
            y = y + self.bias
        return y, self._bias_out()
