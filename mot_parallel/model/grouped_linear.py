"""Per-modality tensor-parallel linears with Megatron's contracts: forward(x, plan) -> (output, bias).

Weights are stacked per modality: column-parallel [G, out/tp, in], row-parallel [G, out, in/tp], with
G = number of modalities when the part is untied and G = 1 when it is shared (then forward is one plain
GEMM and ignores the plan). The TP collectives are exactly a dense Megatron linear's, issued once on the
whole token tensor, never per modality: column = SP all-gather (or copy-to-TP), row = reduce-scatter (or
all-reduce). Input is flat [tokens, features] in the plan's grouped order.

`output_blocks` splits the output dim of a fused column weight into blocks that are each sharded over
TP (fused QKV with GQA: [H*d, KV*d, KV*d]; SwiGLU: [ffn, ffn]), so rank r holds [q_r; k_r; v_r].
Initialisation draws every (block, modality) full matrix from its own seeded generator and keeps this
rank's shard: identical across TP sizes; `modality_copies='shared_start'` makes all copies equal.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..distributed.collectives import group_rank, group_size
from ..tensor_parallel import mappings as M
from ..tensor_parallel.init import InitMethod, draw_full, normal_init, param_seed, set_tp_attributes, shard
from .grouped_ops import grouped_mm
from .routing import RoutingPlan


def _cfg(config, name, default):
    return getattr(config, name, default) if config is not None else default


class _GroupedParallelLinear(nn.Module):
    def __init__(self, input_size: int, output_size: int, num_groups: int, partition_dim: int, *, config=None,
                 init_method: Optional[InitMethod] = None, bias: bool = False, skip_bias_add: bool = False,
                 tp_group=None, output_blocks: Optional[Sequence[int]] = None, init_seed: int = 0,
                 modality_copies: Optional[str] = None, sequence_parallel: Optional[bool] = None, device=None,
                 **unused_megatron_kwargs):
        super().__init__()
        self.tp_group, self.tp_size, self.tp_rank = tp_group, group_size(tp_group), group_rank(tp_group)
        self.num_groups, self.skip_bias_add = num_groups, skip_bias_add
        self.sequence_parallel = bool(_cfg(config, "sequence_parallel", False) if sequence_parallel is None
                                      else sequence_parallel) and self.tp_size > 1
        self.blocks = list(output_blocks) if output_blocks else [output_size]
        if sum(self.blocks) != output_size:
            raise ValueError(f"output blocks {self.blocks} do not add up to {output_size}")
        split = self.blocks if partition_dim == 0 else [input_size]
        for size in split:
            if size % self.tp_size:
                raise ValueError(f"{type(self).__name__}: dimension {size} not divisible by TP size {self.tp_size}")
        local = (output_size // self.tp_size, input_size) if partition_dim == 0 else \
            (output_size, input_size // self.tp_size)
        dtype = _cfg(config, "params_dtype", torch.float32)
        self.weight = nn.Parameter(torch.empty((num_groups,) + local, device=device, dtype=dtype))
        # dims are those of the stacked [G, out, in] tensor: the modality axis is never split
        set_tp_attributes(self.weight, self.tp_size > 1, partition_dim + 1, 1)
        self.weight.mot_blocks = tuple(self.blocks) if partition_dim == 0 else None  # fused-output layout
        self.partition_dim, self.input_size, self.output_size = partition_dim, input_size, output_size
        copies = modality_copies or _cfg(config, "modality_copies", "independent")
        if _cfg(config, "perform_initialization", True) and self.weight.device.type != "meta":
            self._init(init_method or normal_init(_cfg(config, "init_std", 0.02)), init_seed, copies)
        self.bias = None
        if bias:
            n = output_size // self.tp_size if partition_dim == 0 else output_size
            self.bias = nn.Parameter(torch.zeros(num_groups, n, device=device, dtype=dtype))
            set_tp_attributes(self.bias, partition_dim == 0 and self.tp_size > 1, 1 if partition_dim == 0 else -1)
            if partition_dim == 1 and self.sequence_parallel:
                self.bias.sequence_parallel = True

    @torch.no_grad()
    def _init(self, init_method, seed, copies):
        for g in range(self.num_groups):
            source = 0 if copies == "shared_start" else g
            if self.partition_dim == 0:
                parts = [shard(draw_full((size, self.input_size), init_method, param_seed(seed, f"b{b}.m{source}")),
                               0, self.tp_rank, self.tp_size) for b, size in enumerate(self.blocks)]
                self.weight[g].copy_(torch.cat(parts, 0))
            else:
                full = draw_full((self.output_size, self.input_size), init_method, param_seed(seed, f"b0.m{source}"))
                self.weight[g].copy_(shard(full, 1, self.tp_rank, self.tp_size))

    def _gemm(self, x: torch.Tensor, plan: Optional[RoutingPlan], counts, blocks=None):
        if self.num_groups == 1:
            counts = (x.shape[0],)  # one weight copy for all tokens: no routing needed
        return grouped_mm(x, self.weight, counts, plan.offsets if plan is not None else None, blocks)

    def _add_bias(self, y: torch.Tensor, bias: torch.Tensor, counts) -> torch.Tensor:
        if self.num_groups == 1:
            return y + bias[0]
        repeats = torch.tensor(counts, device=y.device)
        return y + bias.repeat_interleave(repeats, dim=0, output_size=y.shape[0])


class GroupedColumnParallelLinear(_GroupedParallelLinear):
    def __init__(self, input_size: int, output_size: int, num_groups: int = 1, *, gather_output: bool = False,
                 **kwargs):
        if gather_output:
            raise ValueError("GroupedColumnParallelLinear keeps outputs sharded (gather_output=False)")
        super().__init__(input_size, output_size, num_groups, 0, **kwargs)

    def forward(self, x: torch.Tensor, plan: Optional[RoutingPlan] = None):
        """Megatron's contract: (output [N, out/tp], bias or None)."""
        ys, bias = self.forward_blocks(x, plan, whole=True)
        return ys[0], bias

    def forward_blocks(self, x: torch.Tensor, plan: Optional[RoutingPlan] = None, whole: bool = False):
        """One contiguous output per output block ([q, k, v] or [gate, up]); this rank's shards."""
        if self.sequence_parallel:
            x = M.gather_from_sp_region(x, self.tp_group, plan.sp_sizes if plan is not None else None)
        else:
            x = M.copy_to_tp_region(x, self.tp_group)
        x = x.reshape(-1, x.shape[-1])
        counts = plan.norm_counts(False) if self.num_groups > 1 else None  # all tokens after the gather
        blocks = [self.weight.shape[1]] if whole else [b // self.tp_size for b in self.blocks]
        ys = self._gemm(x, plan, counts, blocks)
        if self.bias is not None and not self.skip_bias_add:
            bs = [self.bias] if whole else self.bias.split(blocks, dim=-1)
            ys = [self._add_bias(y, b, counts) for y, b in zip(ys, bs)]
        return ys, (self.bias if self.skip_bias_add else None)


class GroupedRowParallelLinear(_GroupedParallelLinear):
    def __init__(self, input_size: int, output_size: int, num_groups: int = 1, *, input_is_parallel: bool = True,
                 **kwargs):
        if not input_is_parallel:
            raise ValueError("GroupedRowParallelLinear takes TP-sharded inputs (input_is_parallel=True)")
        super().__init__(input_size, output_size, num_groups, 1, **kwargs)

    def forward(self, x: torch.Tensor, plan: Optional[RoutingPlan] = None):
        counts = plan.norm_counts(False) if self.num_groups > 1 else None
        y = self._gemm(x.reshape(-1, x.shape[-1]), plan, counts)
        if self.sequence_parallel:
            y = M.reduce_scatter_to_sp_region(y, self.tp_group, plan.sp_sizes if plan is not None else None)
        else:
            y = M.reduce_from_tp_region(y, self.tp_group)
        if self.bias is not None and not self.skip_bias_add:
            y = self._add_bias(y, self.bias, plan.norm_counts(self.sequence_parallel) if self.num_groups > 1 else None)
        return y, (self.bias if self.skip_bias_add else None)
