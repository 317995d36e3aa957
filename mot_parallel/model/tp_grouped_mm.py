"""Plain tensor parallelism (no SP): the column-parallel grouped GEMM fused with its input-gradient
all-reduce (Megatron's "f" operator), so that the all-reduce overlaps the weight-gradient GEMMs.

Unfused, the column linear is copy_to_tp_region (forward identity, backward all-reduce of dx) followed
by the GEMM, and autograd runs the GEMM's whole backward (dx, then dW) before the all-reduce starts.
Fused, backward computes dx, launches its all-reduce, computes dW while it travels, then waits - as
Megatron's LinearWithGradAccumulationAndAsyncCommunication does. One all-reduce of [N, in] per call,
exactly as before (same call, same bytes), so the layer's collective sequence is unchanged.
"""
from __future__ import annotations

from typing import List, Sequence

import torch

from ..distributed import async_collectives as AC
from ..distributed.collectives import group_size
from .grouped_ops import check_groups, grouped_mm, grouped_mm_forward, grouped_mm_input_grad, grouped_mm_weight_grads


class _TPGroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, counts, blocks, *ws):
        ctx.group, ctx.counts, ctx.blocks = group, counts, blocks
        ctx.save_for_backward(x, *ws)
        return tuple(grouped_mm_forward(x, ws, counts, blocks))

    @staticmethod
    def backward(ctx, *gys):
        x, *ws = ctx.saved_tensors
        gys = [None if gy is None else gy.contiguous() for gy in gys]
        reduce = None
        if ctx.needs_input_grad[0]:  # each TP rank holds a partial dx: sum it while dW is computed
            gx = grouped_mm_input_grad(gys, ws, ctx.counts, ctx.blocks, torch.empty_like(x))
            reduce = AC.start_all_reduce(gx, ctx.group)
        gws = grouped_mm_weight_grads(gys, x, ws, ctx.counts, ctx.blocks, ctx.needs_input_grad[4:])
        gx = reduce.wait() if reduce is not None else None
        return (gx, None, None, None, *gws)


def tp_grouped_mm(x: torch.Tensor, ws: Sequence[torch.Tensor], counts: Sequence[int], blocks: Sequence[int],
                  group) -> List[torch.Tensor]:
    """x [N, in] replicated over the TP group (grouped by `counts`), ws: one [out/t, in] weight per group ->
    one [N, b] output per block; backward all-reduces dx over the group, overlapped with dW."""
    if group_size(group) == 1:
        return grouped_mm(x, ws, counts, blocks)
    check_groups(counts, ws, x.shape[0])
    return list(_TPGroupedMM.apply(x.contiguous(), group, tuple(counts), tuple(blocks), *ws))
