"""Megatron-contract column-parallel linear (the output head): weight [out/tp, in], forward -> (output, bias).

The MoT layers use their per-modality twins (model/grouped_linear.py); this one is the shared output layer.

The parallel split comes as one `ParallelContext` (`parallel=`); the weight's draw as a `SeededInit`.
Megatron's keywords (`init_method`, `gather_output`, `skip_bias_add`, ...) are taken by
megatron_kwargs.py: honoured, or refused by name when they would change something we do not implement.
From `config` we read `params_dtype` and `perform_initialization` when present.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from . import mappings as M
from .megatron_kwargs import take_megatron_kwargs
from .param_meta import mark_tp_sharded
from .weight_init import SeededInit, init_sharded_, normal_init


def config_value(config, name: str, default):
    """`config.name` of a Megatron-style config object (ours or Megatron's), or `default` without one."""
    return getattr(config, name, default) if config is not None else default


class ColumnParallelLinear(nn.Module):
    """Y = X A^T with A split by rows (output features). Input [.., in] (or [s/tp, b, in] under SP)."""

    def __init__(self, input_size: int, output_size: int, *, parallel: ParallelContext = SINGLE_PROCESS,
                 config=None, init: Optional[SeededInit] = None, bias: bool = True, device=None, **megatron_kwargs):
        super().__init__()
        megatron_init, self.gather_output, self.skip_bias_add, dtype = take_megatron_kwargs(
            "ColumnParallelLinear", megatron_kwargs,
            {"init_method": None, "gather_output": False, "skip_bias_add": False, "params_dtype": None})
        init = init or SeededInit(megatron_init or normal_init(0.02))
        self.parallel, self.tp_group, self.tp_size = parallel, parallel.tp_group, parallel.tp_size
        self.sequence_parallel = parallel.sequence_parallel
        self.input_size, self.output_size = input_size, output_size
        if self.gather_output and self.sequence_parallel:
            raise ValueError("ColumnParallelLinear: gather_output with sequence_parallel is not supported")
        if output_size % self.tp_size:
            raise ValueError(f"ColumnParallelLinear: size {output_size} is not divisible by tensor-parallel "
                             f"size {self.tp_size}")
        dtype = dtype or config_value(config, "params_dtype", torch.float32)
        self.weight = nn.Parameter(torch.empty(output_size // self.tp_size, input_size, device=device, dtype=dtype))
        mark_tp_sharded(self.weight, 0, self.tp_size)
        if config_value(config, "perform_initialization", True):
            init_sharded_(self.weight, init.method, (output_size, input_size), 0, parallel.tp_rank, self.tp_size,
                          init.seed)
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
