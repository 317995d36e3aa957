"""Asynchronous tensor-parallel collectives, for overlapping communication with GEMMs.

    pending = start_all_gather_dim0(x, group, sizes)   # launched
    ...                                                # compute that does not need the result
    full = pending.wait()                              # the gathered tensor

Megatron's LinearWithGradAccumulationAndAsyncCommunication does this in the backward of its column
linears. The calls, shapes and uneven-size padding are exactly collectives.py's blocking versions (the
same torch.distributed functions, looked up per call so tests can count them), so a layer's collective
sequence does not change when it overlaps. gloo runs the operation on its own threads; NCCL on its own
stream, and `wait()` then only makes the compute stream wait for it (no host synchronisation).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch.profiler import record_function

from .collectives import TP_SCOPE, group_rank, group_size


class Pending:
    """A launched collective; `wait()` returns its result (once)."""
    __slots__ = ("_work", "_finish")

    def __init__(self, work, finish: Callable[[], torch.Tensor]):
        self._work, self._finish = work, finish

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            self._work.wait()
            self._work = None
        return self._finish()


def start_all_reduce(x: torch.Tensor, group) -> Pending:
    """Sum `x` over the group, in place."""
    if group_size(group) == 1:
        return Pending(None, lambda: x)
    with record_function(TP_SCOPE):
        work = dist.all_reduce(x, group=group, async_op=True)
    return Pending(work, lambda: x)


def start_all_gather_dim0(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None) -> Pending:
    """collectives.all_gather_dim0, launched."""
    world = group_size(group)
    if world == 1:
        return Pending(None, lambda: x)
    x = x.contiguous()
    even = sizes is None or len(set(sizes)) == 1
    pad = x.shape[0] if even else max(sizes)
    src = x
    if not even:  # gloo's all-gather needs equal pieces: pad to the largest
        src = x.new_zeros((pad,) + tuple(x.shape[1:]))
        src[: x.shape[0]] = x
    out = x.new_empty((pad * world,) + tuple(x.shape[1:]))
    with record_function(TP_SCOPE):
        work = (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(
            out, src, group=group, async_op=True)
    if even:
        return Pending(work, lambda: out)
    return Pending(work, lambda: torch.cat([out[r * pad: r * pad + s] for r, s in enumerate(sizes)]))


def start_reduce_scatter_dim0(x: torch.Tensor, group, sizes: Optional[Sequence[int]] = None) -> Pending:
    """collectives.reduce_scatter_dim0, launched."""
    world = group_size(group)
    if world == 1:
        return Pending(None, lambda: x)
    x = x.contiguous()
    if sizes is None or len(set(sizes)) == 1:
        if x.shape[0] % world:
            raise ValueError(f"reduce-scatter of dim 0 = {x.shape[0]} over {world} ranks needs `sizes`")
        src, pad, keep = x, x.shape[0] // world, None
    else:
        pad, keep = max(sizes), sizes[group_rank(group)]
        src = x.new_zeros((pad * world,) + tuple(x.shape[1:]))
        offset = 0
        for r, s in enumerate(sizes):
            src[r * pad: r * pad + s] = x[offset: offset + s]
            offset += s
    out = x.new_empty((pad,) + tuple(x.shape[1:]))
    with record_function(TP_SCOPE):
        work = (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(
            out, src, group=group, async_op=True)
    return Pending(work, lambda: out if keep is None else out[:keep])
