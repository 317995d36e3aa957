"""One optimizer step over this rank's micro-batches, on a DeepSpeed engine or pipeline engine.

Loss normalisation: every micro-batch contributes sum(loss_sum * w), with w the objective's weights from
the whole global batch's per-modality target counts (model.py `objective_weights`: 1 / all targets, or with
continuous modalities the LM mean plus lambda x each diffusion mean); every rank knows the counts from the
loader, so the loss and its gradient do not depend on how the batch is split over ranks and micro-batches.
DeepSpeed averages gradients over DP (and divides by the accumulation steps under PP), so the loss is
pre-multiplied by DP (pipeline: DP x accumulation, in PipeLoss). Returns the step's per-modality loss sums and loss-token counts over the whole global batch,
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
from ..model.model import objective_weights
from .pipeline import pipeline_micro_batch


class StepRunner:
    def __init__(self, engine, topo, settings, device: torch.device, pipe_loss=None,
                 time_breakdown: Optional[bool] = None, before_optimizer: Optional[Callable[[], None]] = None):
        self.engine, self.topo, self.settings, self.device = engine, topo, settings, device
        self.m = settings.num_modalities
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
        weights = objective_weights(self.settings, batch.global_label_counts.to(self.device))
        times = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        loss_sum, count = torch.zeros(self.m, device=self.device), torch.zeros(self.m, device=self.device)
        for mb in batch.micro_batches:
            t0 = self._sync()
            with record_function("mot/forward"):
                out = self.engine(mb.tokens, mb.plan, labels=mb.labels, label_modalities=mb.label_modalities,
                                  continuous=mb.continuous)
            t1 = self._sync()
            with record_function("mot/backward"):
                self.engine.backward((out.loss_sum * weights).sum() * self.topo.dp_size, scale_wrt_gas=False)
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
        data = [pipeline_micro_batch(mb, batch.global_label_counts.to(self.device)) for mb in batch.micro_batches]
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
