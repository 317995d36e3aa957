"""The sequence-parallel all-gather fused with the column-parallel grouped GEMM it feeds (QKV, FFN up).

Under SP a column-parallel linear receives this rank's slice [n/t, h] of the token stream and all-gathers
it to [n, h] for the GEMM. Autograd would keep that gathered tensor for the weight gradient: t times the
slice, twice per layer (2 h n elements instead of 2 h n / t; at TP=8 42% of a 7B layer's saved
activations). Like Megatron's LinearWithGradAccumulationAndAsyncCommunication, this saves only the local
slice and all-gathers it again in backward: one more all-gather per column linear in backward, for t x
less memory. Collectives per call, forward: all-gather; backward: all-gather (x again), reduce-scatter (dx)
- the same as a dense Megatron column-parallel linear under SP, whatever the number of modalities.

Backward overlaps both, as Megatron does: the all-gather of x is launched before the dx GEMM (which does
not need it) and awaited after; the reduce-scatter of dx is launched before the weight-gradient GEMMs
(which do not need it) and awaited after. Same calls, same order, same bytes as without overlap.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..distributed import async_collectives as AC
from ..distributed import collectives as C
from .grouped_ops import check_groups, grouped_mm_forward, grouped_mm_input_grad, grouped_mm_weight_grads


class _SPGatherGroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes, counts, blocks, *ws):
        ctx.group, ctx.sizes, ctx.counts, ctx.blocks = group, sizes, counts, blocks
        ctx.save_for_backward(x, *ws)  # the local slice only
        full = C.all_gather_dim0(x, group, sizes)
        return tuple(grouped_mm_forward(full, ws, counts, blocks))

    @staticmethod
    def backward(ctx, *gys):
        x, *ws = ctx.saved_tensors
        gys = [None if gy is None else gy.contiguous() for gy in gys]
        need_w = ctx.needs_input_grad[5:]
        # x is gathered again for the weight gradients (all TP ranks agree on which weights need them),
        # while the dx GEMM runs
        gather = AC.start_all_gather_dim0(x, ctx.group, ctx.sizes) if any(need_w) else None
        gx_full = None
        if ctx.needs_input_grad[0]:
            n = sum(ctx.counts)
            gx_full = grouped_mm_input_grad(gys, ws, ctx.counts, ctx.blocks, x.new_empty(n, x.shape[-1]))
        full = gather.wait() if gather is not None else None
        # each rank held a partial dx: reduce-scatter it while the weight-gradient GEMMs run
        scatter = AC.start_reduce_scatter_dim0(gx_full, ctx.group, ctx.sizes) if gx_full is not None else None
        gws = grouped_mm_weight_grads(gys, full, ws, ctx.counts, ctx.blocks, need_w)
        gx = scatter.wait() if scatter is not None else None
        return (gx, None, None, None, None, *gws)


def sp_gather_grouped_mm(x: torch.Tensor, ws: Sequence[torch.Tensor], counts: Sequence[int], blocks: Sequence[int],
                         group, sizes: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
    """x: this rank's [n_r, in] slice (per-rank sizes `sizes`, None = even); counts: per-group token counts
    of the gathered [n, in]; returns one [n, b] output per block of `blocks`."""
    sizes = None if sizes is None else tuple(int(n) for n in sizes)
    check_groups(counts, ws, sum(sizes) if sizes is not None else x.shape[0] * C.group_size(group))
    return list(_SPGatherGroupedMM.apply(x.contiguous(), group, sizes, tuple(counts), tuple(blocks), *ws))
