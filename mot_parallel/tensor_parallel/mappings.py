"""Tensor- and sequence-parallel region boundaries as autograd functions with an explicit group.

Each forward collective is paired with its adjoint in backward (Megatron's "f/g" operators):

  copy_to_tp_region              fwd identity                bwd all-reduce
  reduce_from_tp_region          fwd all-reduce              bwd identity
  scatter_to_tp_region           fwd split last dim          bwd all-gather last dim
  gather_from_tp_region          fwd all-gather last dim     bwd split last dim
  scatter_to_sp_region           fwd split dim 0             bwd all-gather dim 0
  gather_from_sp_region          fwd all-gather dim 0        bwd reduce-scatter dim 0 (or split, see below)
  reduce_scatter_to_sp_region    fwd reduce-scatter dim 0    bwd all-gather dim 0

`sizes` gives per-rank dim-0 sizes for uneven sequence splits (None = even).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..distributed import collectives as C


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return C.all_reduce(g.contiguous().clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        # clone: the input may be saved or reused by the caller; the all-reduce is in place
        return C.all_reduce(x.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return C.split_dim(x, group, dim=-1)

    @staticmethod
    def backward(ctx, g):
        return C.all_gather_last_dim(g, ctx.group), None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return C.all_gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, g):
        return C.split_dim(g, ctx.group, dim=-1), None


class _ScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes):
        ctx.group, ctx.sizes = group, sizes
        return C.split_dim(x, group, dim=0, sizes=sizes)

    @staticmethod
    def backward(ctx, g):
        return C.all_gather_dim0(g, ctx.group, ctx.sizes), None, None


class _GatherFromSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes, grad_is_partial):
        ctx.group, ctx.sizes, ctx.grad_is_partial = group, sizes, grad_is_partial
        return C.all_gather_dim0(x, group, sizes)

    @staticmethod
    def backward(ctx, g):
        if ctx.grad_is_partial:  # the gathered tensor fed a TP region: each rank holds a partial gradient
            return C.reduce_scatter_dim0(g, ctx.group, ctx.sizes), None, None, None
        return C.split_dim(g, ctx.group, dim=0, sizes=ctx.sizes), None, None, None


class _ReduceScatterToSP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes):
        ctx.group, ctx.sizes = group, sizes
        return C.reduce_scatter_dim0(x, group, sizes)

    @staticmethod
    def backward(ctx, g):
        return C.all_gather_dim0(g, ctx.group, ctx.sizes), None, None


def copy_to_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if C.group_size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if C.group_size(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if C.group_size(group) == 1 else _ScatterToTP.apply(x, group)


def gather_from_tp_region(x: torch.Tensor, group) -> torch.Tensor:
    return x if C.group_size(group) == 1 else _GatherFromTP.apply(x, group)


def scatter_to_sp_region(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    return x if C.group_size(group) == 1 else _ScatterToSP.apply(x, group, _tuple(sizes))


def gather_from_sp_region(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None,
                          grad_is_partial: bool = True) -> torch.Tensor:
    """All-gather dim 0. `grad_is_partial=True` (the gathered input feeds column-parallel GEMMs) makes
    backward a reduce-scatter; False (a replicated consumer, e.g. a loss) makes it a plain split."""
    return x if C.group_size(group) == 1 else _GatherFromSP.apply(x, group, _tuple(sizes), grad_is_partial)


def reduce_scatter_to_sp_region(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
    return x if C.group_size(group) == 1 else _ReduceScatterToSP.apply(x, group, _tuple(sizes))


def _tuple(sizes):
    return None if sizes is None else tuple(int(s) for s in sizes)
