"""Measure a training run's memory on CPU, for checking the planner's model (tests/planner/test_planner.py).

glibc is set to return freed tensors to the OS (device.set_host_allocator("release")), so resident memory
follows live tensors; the kernel's exact resident high-water mark (VmHWM, reset through /proc/self/clear_refs
right before the first optimizer step) gives the peak during the steps, minus the resident memory just
before the trainer is built (imports, process group and corpus are excluded, as a GPU's allocator
counter would exclude them). No sampling: short-lived peaks are caught too.
"""
from __future__ import annotations

from typing import List

from ..distributed.host_memory import peak_rss_bytes, reset_peak_rss, rss_bytes


def measured_training_memory(overrides: List[str]) -> dict:
    """Train (on the ranks the harness started) and return this rank's measured memory in bytes."""
    from ..config import load_config
    from ..distributed.device import set_host_allocator
    from ..training import Trainer
    set_host_allocator("release")
    cfg = load_config(None, list(overrides))
    from ..data.datasets import open_datasets
    open_datasets(cfg)  # build/map the corpus before the baseline
    base = rss_bytes()
    after: List[int] = []

    def begin(step):  # the window is the optimizer steps only (not the final checkpoint save)
        if step == 1:
            reset_peak_rss()

    def end(step):
        after.append(rss_bytes() - base)
        if step == cfg.train.steps:
            after.append(peak_rss_bytes() - base)
    trainer = Trainer(cfg, on_step_begin=begin, on_step_end=end)
    built = rss_bytes() - base
    trainer.train()
    return {"after_build": built, "after_steps": after[:-1], "peak_during_training": after[-1]}
