"""One optimizer step over this rank's micro-batches, on a DeepSpeed engine or pipeline engine.

Loss normalisation: every micro-batch contributes loss_sum / N, N = the loss tokens of the whole global
batch (every rank knows it from the loader), so the loss and its gradient do not depend on how the batch
is split over ranks and micro-batches. DeepSpeed averages gradients over DP (and divides by the
accumulation steps under PP), so the loss is pre-multiplied by DP (pipeline: DP x accumulation, in
PipeLoss). Returns the step's per-modality loss sums and loss-token counts over the whole global batch,
and the time split (with `time_breakdown`, default on for CPU and off on GPUs, the device is synchronised
between the phases).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..distributed import device as dev
from .pipeline import stage_inputs


class StepRunner:
    def __init__(self, engine, topo, num_modalities: int, device: torch.device, pipe_loss=None,
                 time_breakdown: Optional[bool] = None, before_optimizer: Optional[Callable[[], None]] = None):
        self.engine, self.topo, self.m, self.device = engine, topo, num_modalities, device
        self.pipe_loss, self.time_breakdown = pipe_loss, time_breakdown
        self.before_optimizer = before_optimizer  # diagnostics: sees the reduced, unclipped gradients

    def _sync(self) -> float:
        on = self.time_breakdown
        if on or (on is None and not dev.is_accelerator(self.device)):  # null: off on GPUs (4 syncs a step)
            dev.synchronize(self.device)
        return time.perf_counter()

    def run(self, batch) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Dict[str, float]]:
        return self._pipeline(batch) if self.pipe_loss is not None else self._micro_batches(batch)

    def _micro_batches(self, batch):
        norm = float(batch.global_label_counts.sum())
        times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        loss_sum, count = torch.zeros(self.m, device=self.device), torch.zeros(self.m, device=self.device)
        for mb in batch.micro_batches:
            t0 = self._sync()
            with record_function("mot/forward"):
                out = self.engine(mb.tokens, mb.plan, mb.labels, mb.label_modalities)
            t1 = self._sync()
            with record_function("mot/backward"):
                self.engine.backward(out.loss_sum.sum() * (self.topo.dp_size / norm), scale_wrt_gas=False)
            if self.before_optimizer is not None and mb is batch.micro_batches[-1]:
                self.before_optimizer()
            t2 = self._sync()
            with record_function("mot/optimizer"):
                self.engine.step()
            t3 = self._sync()
            times["forward"] += t1 - t0
            times["backward"] += t2 - t1
            times["optimizer"] += t3 - t2
            loss_sum += out.loss_sum.detach().float()
            count += out.token_count
        sums = torch.cat([loss_sum, count])
        dist.all_reduce(sums, group=self.topo.dp_group)
        return (sums[:self.m], sums[self.m:]), times

    def _pipeline(self, batch):
        data = [(stage_inputs(mb.tokens, mb.plan),
                 (mb.labels, mb.label_modalities, batch.global_label_counts.to(self.device)))
                for mb in batch.micro_batches]
        t = self._sync()
        with record_function("mot/pipeline"):
            self.engine.train_batch(data_iter=iter(data))
        times = {"pipeline": self._sync() - t}
        # per-modality sums of the step from the last stage, to every stage (rank 0 logs)
        sums = torch.zeros(2 * self.m, device=self.device)
        if self.topo.is_last_stage:
            loss_sum, count = self.pipe_loss.pop()
            sums = torch.cat([loss_sum.float(), count])
            dist.all_reduce(sums, group=self.topo.dp_group)
        dist.broadcast(sums, src=self.topo.pp_ranks[-1], group=self.topo.pp_group)
        return (sums[:self.m], sums[self.m:]), times
