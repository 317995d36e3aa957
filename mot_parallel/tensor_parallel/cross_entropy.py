"""Cross-entropy over vocab-sharded logits without ever gathering them (Megatron's algorithm).

Per token: max over the vocab (all-reduce MAX), the target's logit (owned by one rank; all-reduce SUM),
and sum of exp (all-reduce SUM): three all-reduces of [tokens] floats instead of [tokens, vocab].
Padded vocabulary rows (ids >= `vocab_size`) are masked out so the loss equals the unpadded one.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from ..distributed import collectives as C


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, vocab_size, ignore_index):
        per_rank = logits.shape[-1]
        start = C.group_rank(group) * per_rank
        ctx.in_dtype = logits.dtype
        x = logits.float()
        if vocab_size is not None and start + per_rank > vocab_size:  # mask the padded vocabulary rows
            x = x.clone() if x is logits else x
            x[..., max(vocab_size - start, 0):] = float("-inf")
        logits = x
        logits_max = C.all_reduce(logits.max(dim=-1).values, group, op=dist.ReduceOp.MAX)
        shifted = logits - logits_max.unsqueeze(-1)
        local = target - start
        mine = (local >= 0) & (local < per_rank)
        local = local.masked_fill(~mine, 0)
        picked = shifted.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0.0)
        C.all_reduce(picked, group)
        exp = shifted.exp_()
        sum_exp = C.all_reduce(exp.sum(dim=-1), group)
        loss = torch.log(sum_exp) - picked
        ignored = target == ignore_index
        loss = loss.masked_fill(ignored, 0.0)
        exp.div_(sum_exp.unsqueeze(-1))  # softmax, kept for backward
        ctx.save_for_backward(exp, local, mine, ignored)
        return loss

    @staticmethod
    def backward(ctx, g):
        softmax, local, mine, ignored = ctx.saved_tensors
        grad = softmax  # in place, as Megatron: saves a [tokens, vocab/tp] fp32 buffer (no double backward)
        grad.scatter_add_(-1, local.unsqueeze(-1), -mine.to(grad.dtype).unsqueeze(-1))
        grad.mul_((g * (~ignored)).unsqueeze(-1))
        return grad.to(ctx.in_dtype), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group=None,
                                 vocab_size: Optional[int] = None, ignore_index: int = -100) -> torch.Tensor:
    """Per-token losses (fp32, 0 where target == ignore_index) from logits sharded on the last dim.

    `vocab_size`: the true vocabulary; logits for padded ids >= vocab_size are excluded from the softmax.
    The gradient w.r.t. the logits has the logits' dtype."""
    return _VocabParallelCE.apply(logits, target, group, vocab_size, ignore_index)
