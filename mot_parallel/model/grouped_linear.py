"""Per-modality tensor-parallel linears with Megatron's contracts: forward(x, plan) -> (output, bias).

A shared part (`modalities=None`) holds one `weight` like a Megatron linear ([out/tp, in] column,
[out, in/tp] row) and is one GEMM that ignores the plan. An untied part holds one parameter per modality
in a ParameterDict, `weight.<modality>` (its modality in its typed metadata, param_meta.py), so optimizer groups (LR multipliers,
freezing, weight decay), ZeRO and checkpoints all see each modality's copy as its own tensor. The TP
collectives are exactly a dense Megatron linear's, issued once on the whole token tensor, never per
modality: column = SP all-gather (or copy-to-TP), row = reduce-scatter (or all-reduce); under SP the
column's all-gather is fused with its GEMM so backward keeps only the local slice (sp_grouped_mm.py).
Input is flat [tokens, features] in the plan's grouped order.

An `output_size` given as blocks splits the output dim of a fused column weight into blocks that are each sharded over
TP (fused QKV with GQA: [H*d, KV*d, KV*d]; SwiGLU: [ffn, ffn]), so rank r holds [q_r; k_r; v_r] (the
blocks are recorded in the parameter's metadata, a bias's too). Initialisation draws every (block, modality)
full matrix from its own seeded generator and keeps this rank's shard: identical across TP sizes;
`modality_copies='shared_start'` makes copies equal.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from ..tensor_parallel import mappings as M
from ..tensor_parallel.param_meta import mark_replicated, mark_sequence_parallel, mark_tp_sharded, set_modality
from ..tensor_parallel.layers import config_value
from ..tensor_parallel.megatron_kwargs import take_megatron_kwargs
from ..tensor_parallel.weight_init import SeededInit, draw_full, normal_init, param_seed
from ..tensor_parallel.layout import split_full
from .grouped_ops import grouped_mm
from .routing import RoutingPlan
from .sp_grouped_mm import sp_gather_grouped_mm
from .tp_grouped_mm import tp_grouped_mm


class _GroupedParallelLinear(nn.Module):
    partition_dim = 0                    # 0: column (outputs sharded), 1: row (inputs sharded)
    fixed_megatron_kwargs: dict = {}     # Megatron keywords this layer implements only at one value

    def __init__(self, input_size: int, output_size: Union[int, Sequence[int]], modalities: Optional[Sequence[str]],
                 *, parallel: ParallelContext = SINGLE_PROCESS, config=None, init: Optional[SeededInit] = None,
                 bias: bool = False, device=None, **megatron_kwargs):
        """`output_size`: an int, or the sizes of a fused weight's output blocks (each sharded over TP)."""
        super().__init__()
        name = type(self).__name__
        megatron_init, self.skip_bias_add, *fixed = take_megatron_kwargs(
            name, megatron_kwargs, {"init_method": None, "skip_bias_add": False, **self.fixed_megatron_kwargs})
        for (key, want), got in zip(self.fixed_megatron_kwargs.items(), fixed):
            if got != want:
                raise ValueError(f"{name} implements only {key}={want!r} (got {got!r})")
        self.parallel, self.tp_group, self.tp_size = parallel, parallel.tp_group, parallel.tp_size
        self.tp_rank, self.sequence_parallel = parallel.tp_rank, parallel.sequence_parallel
        self.modalities = list(modalities) if modalities else None
        self.blocks = [output_size] if isinstance(output_size, int) else [int(b) for b in output_size]
        output_size = sum(self.blocks)
        partition_dim = self.partition_dim
        for size in (self.blocks if partition_dim == 0 else [input_size]):
            if size % self.tp_size:
                raise ValueError(f"{name}: dimension {size} not divisible by TP size {self.tp_size}")
        self.input_size, self.output_size = input_size, output_size
        local = (output_size // self.tp_size, input_size) if partition_dim == 0 else \
            (output_size, input_size // self.tp_size)
        dtype = config_value(config, "params_dtype", torch.float32)
        copies = config_value(config, "modality_copies", "independent")
        init = init or SeededInit(megatron_init or normal_init(config_value(config, "init_std", 0.02)), 0)
        do_init = config_value(config, "perform_initialization", True)

        def make(index: int, modality: Optional[str]) -> nn.Parameter:
            p = nn.Parameter(torch.empty(local, device=device, dtype=dtype))
            mark_tp_sharded(p, partition_dim, self.tp_size, self.blocks if partition_dim == 0 else None)
            set_modality(p, modality)
            if do_init and p.device.type != "meta":
                self._init(p, init.method, init.seed, 0 if copies == "shared_start" else index)
            return p

        if self.modalities is None:
            self.weight = make(0, None)
        else:
            self.weight = nn.ParameterDict({m: make(i, m) for i, m in enumerate(self.modalities)})
        self.bias = None
        if bias:
            self.bias = self._make_biases(dtype, device)

    def _make_biases(self, dtype, device):
        n = self.output_size // self.tp_size if self.partition_dim == 0 else self.output_size

        def make_bias(modality):
            b = nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
            if self.partition_dim == 0:  # sharded with the outputs, block-wise like the weight
                mark_tp_sharded(b, 0, self.tp_size, self.blocks)
            else:
                mark_replicated(b)
                if self.sequence_parallel:
                    mark_sequence_parallel(b)  # replicated, but each rank adds it to other tokens
            set_modality(b, modality)
            return b
        return make_bias(None) if self.modalities is None else \
            nn.ParameterDict({m: make_bias(m) for m in self.modalities})

    @torch.no_grad()
    def _init(self, p: torch.Tensor, init_method, seed: int, source: int) -> None:
        """Each output block of modality copy `source` drawn in full from its own seed; keep this rank's shard."""
        full = torch.cat([draw_full((size, self.input_size), init_method, param_seed(seed, f"b{b}.m{source}"))
                          for b, size in enumerate(self.blocks)])
        blocks = self.blocks if self.partition_dim == 0 else None  # blocks lie along the output dim
        p.copy_(split_full(full, self.partition_dim, self.tp_rank, self.tp_size, blocks))

    def weights(self) -> List[torch.Tensor]:
        """One weight per token group, in modality order (a single one when shared)."""
        return [self.weight] if self.modalities is None else [self.weight[m] for m in self.modalities]

    def _biases(self) -> List[torch.Tensor]:
        return [self.bias] if self.modalities is None else [self.bias[m] for m in self.modalities]

    def _counts(self, plan: Optional[RoutingPlan], n_tokens: int, stream: bool = False):
        """Token counts per weight copy: all tokens (after the SP all-gather) or this rank's stream shard."""
        if self.modalities is None:
            return (n_tokens,)
        return plan.stream_counts if stream else plan.gathered_counts

    def _add_bias(self, ys, counts, blocks):
        """Add each group's bias (split per output block) to its rows."""
        out = []
        r = 0
        for y, b in zip(ys, blocks):
            rows = [bias[r:r + b] for bias in self._biases()]
            if len(rows) == 1:
                out.append(y + rows[0])
            else:
                repeats = torch.tensor(counts, device=y.device)
                out.append(y + torch.stack(rows).repeat_interleave(repeats, dim=0, output_size=y.shape[0]))
            r += b
        return out

    def _bias_out(self):
        return self.bias if self.skip_bias_add else None


class GroupedColumnParallelLinear(_GroupedParallelLinear):
    partition_dim = 0
    fixed_megatron_kwargs = {"gather_output": False}  # outputs stay sharded

    def forward(self, x: torch.Tensor, plan: Optional[RoutingPlan] = None):
        """Megatron's contract: (output [N, out/tp], bias or None)."""
        ys, bias = self.forward_blocks(x, plan, whole=True)
        return ys[0], bias

    def forward_blocks(self, x: torch.Tensor, plan: Optional[RoutingPlan] = None, whole: bool = False):
        """One contiguous output per output block ([q, k, v] or [gate, up]); this rank's shards."""
        blocks = [self.output_size // self.tp_size] if whole else [b // self.tp_size for b in self.blocks]
        x = x.reshape(-1, x.shape[-1])
        if self.sequence_parallel:  # all-gather fused with the GEMM: backward keeps only the local slice
            sizes = plan.sp_sizes if plan is not None else None
            n = sum(sizes) if sizes is not None else x.shape[0] * self.tp_size  # all tokens, once gathered
            counts = self._counts(plan, n)
            ys = sp_gather_grouped_mm(x, self.weights(), counts, blocks, self.tp_group, sizes)
        else:  # copy-to-TP fused with the GEMM: backward overlaps the dx all-reduce with dW
            counts = self._counts(plan, x.shape[0])
            ys = tp_grouped_mm(x, self.weights(), counts, blocks, self.tp_group)
        if self.bias is not None and not self.skip_bias_add:
            ys = self._add_bias(ys, counts, blocks)
        return ys, self._bias_out()


class GroupedRowParallelLinear(_GroupedParallelLinear):
    partition_dim = 1
    fixed_megatron_kwargs = {"input_is_parallel": True}  # takes TP-sharded inputs

    def forward(self, x: torch.Tensor, plan: Optional[RoutingPlan] = None):
        x = x.reshape(-1, x.shape[-1])
        y = grouped_mm(x, self.weights(), self._counts(plan, x.shape[0]))
        if self.sequence_parallel:
            y = M.reduce_scatter_to_sp_region(y, self.tp_group, plan.sp_sizes if plan is not None else None)
        else:
            y = M.reduce_from_tp_region(y, self.tp_group)
        if self.bias is not None and not self.skip_bias_add:
            (y,) = self._add_bias([y], self._counts(plan, y.shape[0], stream=True), [self.output_size])
        return y, self._bias_out()
