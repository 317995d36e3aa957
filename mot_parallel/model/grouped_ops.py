"""Per-modality ops on contiguous token slices: grouped GEMM, grouped RMSNorm, SwiGLU.

Weights come as one tensor per modality (each modality's copy is its own parameter, so optimizers,
ZeRO and checkpoints see per-modality tensors). `counts` are host ints (from the routing plan), so
slicing never synchronises with the device. A modality with zero tokens still takes part: its weight
gets an all-zero gradient (not None), so ZeRO / DDP gradient hooks fire identically on every rank
whatever the batch holds.

The GEMMs are a loop over modalities on contiguous slices, on CPU and GPU alike. With 2-4 modalities
of hundreds to thousands of tokens each, every GEMM is large; a grouped kernel (torch._grouped_mm)
would need the per-modality weights stacked, i.e. a copy of all MoT weights per micro-batch.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch


def _slices(counts: Sequence[int]):
    start = 0
    for g, c in enumerate(counts):
        yield g, start, start + c
        start += c


def check_groups(counts: Sequence[int], ws: Sequence[torch.Tensor], n_tokens: int) -> None:
    """One weight copy per token group, and the groups cover the input exactly."""
    if len(counts) != len(ws):
        raise ValueError(f"{len(counts)} token groups for {len(ws)} weight copies")
    if sum(counts) != n_tokens:
        raise ValueError(f"routing counts sum to {sum(counts)} but the input has {n_tokens} tokens")


def grouped_mm_forward(x: torch.Tensor, ws: Sequence[torch.Tensor], counts: Sequence[int],
                       blocks: Sequence[int]) -> List[torch.Tensor]:
    """For each group g and output block b: y_b[s:e] = x[s:e] @ ws[g][rows_b]^T (no autograd).

    One contiguous output per block (fused [q; k; v] or [gate; up] weights), so consumers never run
    on strided half-views."""
    ys = [x.new_empty(x.shape[0], b) for b in blocks]
    for g, s, e in _slices(counts):
        if e == s:
            continue
        r = 0
        for y, b in zip(ys, blocks):
            torch.mm(x[s:e], ws[g][r:r + b].t(), out=y[s:e])
            r += b
    return ys


def grouped_mm_input_grad(gys: Sequence[Optional[torch.Tensor]], ws: Sequence[torch.Tensor],
                          counts: Sequence[int], blocks: Sequence[int], gx: torch.Tensor) -> torch.Tensor:
    """dx of grouped_mm_forward into `gx` (uninitialised [N, in]: every row is written here, as
    zero-filling 100s of MB costs page faults), accumulated over blocks instead of concatenating them."""
    for g, s, e in _slices(counts):
        r, first = 0, True
        for gy, b in zip(gys, blocks):
            if gy is not None and e > s:
                if first:
                    torch.mm(gy[s:e], ws[g][r:r + b], out=gx[s:e])
                else:
                    gx[s:e].addmm_(gy[s:e], ws[g][r:r + b])
                first = False
            r += b
        if first:
            gx[s:e].zero_()
    return gx


def grouped_mm_weight_grads(gys: Sequence[Optional[torch.Tensor]], x: torch.Tensor, ws: Sequence[torch.Tensor],
                            counts: Sequence[int], blocks: Sequence[int], needed: Sequence[bool]):
    """dW of grouped_mm_forward per group: all-zero (not None) for a group with no tokens."""
    gws = [torch.empty_like(w) if need else None for w, need in zip(ws, needed)]
    for g, s, e in _slices(counts):
        gw, r = gws[g], 0
        if gw is None:
            continue
        for gy, b in zip(gys, blocks):
            if gy is None or e == s:
                gw[r:r + b].zero_()  # no tokens (or an unused block): zero gradient, not None
            else:
                torch.mm(gy[s:e].t(), x[s:e], out=gw[r:r + b])
            r += b
    return gws


class _GroupedMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, counts, blocks, *ws):
        ctx.counts, ctx.blocks = counts, blocks
        ctx.save_for_backward(x, *ws)
        return tuple(grouped_mm_forward(x, ws, counts, blocks))

    @staticmethod
    def backward(ctx, *gys):
        x, *ws = ctx.saved_tensors
        gys = [None if gy is None else gy.contiguous() for gy in gys]
        gx = grouped_mm_input_grad(gys, ws, ctx.counts, ctx.blocks, torch.empty_like(x)) \
            if ctx.needs_input_grad[0] else None
        gws = grouped_mm_weight_grads(gys, x, ws, ctx.counts, ctx.blocks, ctx.needs_input_grad[3:])
        return (gx, None, None, *gws)


def grouped_mm(x: torch.Tensor, ws: Sequence[torch.Tensor], counts: Sequence[int],
               blocks: Optional[Sequence[int]] = None):
    """x [N, in] (tokens grouped by `counts`), ws: one [out, in] weight per group -> [N, out], or one
    [N, b] tensor per output block when `blocks` (sizes along `out`) is given."""
    check_groups(counts, ws, x.shape[0])
    ys = _GroupedMM.apply(x.contiguous(), tuple(counts), tuple(blocks) if blocks else (ws[0].shape[0],), *ws)
    return ys[0] if blocks is None else list(ys)


class _GroupedRMSNorm(torch.autograd.Function):
    """RMSNorm over the last dim with ws[g] on slice g of dim 0 (x [n, ..., d], each w [d])."""

    @staticmethod
    def forward(ctx, x, counts, eps, *ws):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        xhat = xf * rstd
        y = torch.empty_like(xhat)
        for g, s, e in _slices(counts):
            if e > s:
                torch.mul(xhat[s:e], ws[g].float(), out=y[s:e])
        ctx.save_for_backward(x, rstd, *ws)
        ctx.counts = counts
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, rstd, *ws = ctx.saved_tensors
        xhat = x.float() * rstd
        gyf = gy.float()
        gxhat = torch.empty_like(xhat)
        gws = [torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in ws]
        reduce_dims = tuple(range(x.dim() - 1))
        for g, s, e in _slices(ctx.counts):
            if e > s:
                torch.mul(gyf[s:e], ws[g].float(), out=gxhat[s:e])
                gws[g] = (gyf[s:e] * xhat[s:e]).sum(dim=reduce_dims)
        gx = rstd * (gxhat - xhat * (gxhat * xhat).mean(-1, keepdim=True))
        return (gx.to(x.dtype), None, None, *(gw.to(w.dtype) for gw, w in zip(gws, ws)))


def grouped_rms_norm(x: torch.Tensor, ws: Sequence[torch.Tensor], counts: Sequence[int], eps: float) -> torch.Tensor:
    check_groups(counts, ws, x.shape[0])
    return _GroupedRMSNorm.apply(x.contiguous(), tuple(counts), eps, *ws)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain RMSNorm (the dense path): torch's fused op, computed in fp32."""
    return torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps).to(x.dtype)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up. Saves only the inputs (autograd would also keep silu(gate)); backward uses
    torch's fused silu_backward."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, g):
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(g * up, gate), g * torch.nn.functional.silu(gate)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(gate, up)
