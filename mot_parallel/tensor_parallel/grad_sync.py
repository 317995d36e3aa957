"""Sum the partial gradients of TP-replicated parameters over the TP group.

Two kinds of replicated parameters get *different* gradients on each TP rank:
  - tagged `sequence_parallel` (norm weights, row-parallel biases under SP): each rank saw other tokens;
  - marked `tp_partial_grad` (QK-norm weights): shared over heads that are split across TP ranks
    (tags: tensor_parallel/param_meta.py).
The tags are Megatron's (and our QK-norms are named q_layernorm/k_layernorm), so inside Megatron its
own `finalize_model_grads` does this; under DeepSpeed or a plain loop call one of these:
  - `allreduce_tp_partial_grads(params, tp_group)` after backward when grads stay in `param.grad`;
  - `register_tp_grad_hooks(params, tp_group)` once, for engines that consume gradients during backward
    (DeepSpeed ZeRO reduces them in backward hooks): the TP sum then happens as each grad is produced,
    before the engine's own hooks see it.
"""
from __future__ import annotations

from typing import Iterable, List

from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..distributed import collectives as C
from .param_meta import needs_tp_grad_sum


def tp_partial_grad_params(module: nn.Module) -> List[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad and needs_tp_grad_sum(p)]


def allreduce_tp_partial_grads(params: Iterable[nn.Parameter], tp_group) -> None:
    """One coalesced all-reduce over the TP group (a no-op at TP = 1)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or C.group_size(tp_group) == 1:
        return
    flat = C.all_reduce(_flatten_dense_tensors(grads), tp_group)
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def register_tp_grad_hooks(params: Iterable[nn.Parameter], tp_group) -> list:
    """Per-parameter gradient hooks summing over TP as the gradient is produced; returns the handles."""
    if C.group_size(tp_group) == 1:
        return []
    return [p.register_hook(lambda g: C.all_reduce(g.clone(), tp_group)) for p in params]
