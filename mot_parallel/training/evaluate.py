"""Held-out evaluation: per-modality validation loss on a fixed set of validation batches.

Megatron's meaning of the keys: every `train.eval_interval` optimizer steps, and at the end of training,
evaluate on `train.eval_iters` global batches of the validation data (`data.valid_path` or the
`data.valid_fraction` split). The batches are the same at every evaluation (a fresh validation loader from
its initial state each time), so successive evaluations are comparable point to point and a resumed run
evaluates exactly what an uninterrupted one would. Forward only, in eval mode, without gradients: the
training loader, the optimizer and every random stream are untouched, so a run trains bit for bit the same
with evaluation on or off.

Losses are summed per target modality over all evaluation batches and divided by the global per-modality
loss-token counts, exactly like training: over DP with an all-reduce; under PP the last stage's sums are
broadcast along the pipeline.
"""
from __future__ import annotations

import time
from typing import Callable, Tuple

import torch
import torch.distributed as dist

from .pipeline import pipeline_micro_batch


class Evaluator:
    def __init__(self, make_loader: Callable, engine, topo, num_modalities: int, device: torch.device,
                 pipe_loss=None, iters: int = 1):
        self.make_loader, self.engine, self.topo = make_loader, engine, topo
        self.m, self.device, self.pipe_loss, self.iters = num_modalities, device, pipe_loss, iters

    def run(self) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """(loss sums [M], loss-token counts [M], seconds), identical on every rank."""
        t0 = time.perf_counter()
        loader = self.make_loader()
        try:
            sums = torch.zeros(2 * self.m, device=self.device)
            for _ in range(self.iters):
                sums += self._pipeline(next(loader)) if self.pipe_loss is not None else self._micro_batches(next(loader))
        finally:
            loader.close()
        if self.pipe_loss is None:
            dist.all_reduce(sums, group=self.topo.dp_group)
        else:  # the last stage holds the sums (already reduced over its DP group)
            dist.broadcast(sums, src=self.topo.pp_ranks[-1], group=self.topo.pp_group)
        return sums[:self.m], sums[self.m:], time.perf_counter() - t0

    def _micro_batches(self, batch) -> torch.Tensor:
        self.engine.eval()
        try:
            loss_sum = torch.zeros(self.m, device=self.device)
            count = torch.zeros(self.m, device=self.device)
            with torch.no_grad():
                for mb in batch.micro_batches:
                    out = self.engine(mb.tokens, mb.plan, mb.labels, mb.label_modalities, None, mb.continuous)
                    loss_sum += out.loss_sum.float()
                    count += out.token_count
        finally:
            self.engine.train()
        return torch.cat([loss_sum, count])

    def _pipeline(self, batch) -> torch.Tensor:
        data = [pipeline_micro_batch(mb, batch.global_label_counts.to(self.device)) for mb in batch.micro_batches]
        self.engine.eval_batch(data_iter=iter(data), compute_loss=True, bcast_loss=False)
        if not self.topo.is_last_stage:
            return torch.zeros(2 * self.m, device=self.device)
        loss_sum, count = self.pipe_loss.pop()
        sums = torch.cat([loss_sum.float(), count])
        dist.all_reduce(sums, group=self.topo.dp_group)
        return sums
