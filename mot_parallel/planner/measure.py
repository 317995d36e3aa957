"""Measure a training run's memory on CPU, for checking the planner's model (tests/test_planner.py).

glibc is set to return freed tensors to the OS (`track_tensors_in_rss`), so resident memory follows
live tensors; the kernel's exact resident high-water mark (VmHWM, reset through /proc/self/clear_refs
right before the first optimizer step) gives the peak during the steps, minus the resident memory just
before the trainer is built (imports, process group and corpus are excluded, as a GPU's allocator
counter would exclude them). No sampling: short-lived peaks are caught too.
"""
from __future__ import annotations

import os
import re
from typing import List


def track_tensors_in_rss() -> bool:
    """Make resident memory follow live tensors: glibc serves every block >= 64 KiB by mmap (a fixed
    threshold, so it does not adapt upwards) and unmaps it on free, instead of keeping it in a heap that
    only grows. Then peak RSS is close to what a GPU's allocated-memory counter would report."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measured_training_memory(overrides: List[str]) -> dict:
    """Train (on the ranks the harness started) and return this rank's measured memory in bytes."""
    from ..config import load_config
    from ..training import Trainer
    track_tensors_in_rss()
    cfg = load_config(None, list(overrides))
    from ..data.from_config import open_corpus
    open_corpus(cfg)  # build/map the corpus before the baseline
    base = rss_bytes()
    trainer = Trainer(cfg)
    built = rss_bytes() - base
    after: List[int] = []

    def begin(step):  # the window is the optimizer steps only (not the final checkpoint save)
        if step == 1:
            reset_peak_rss()

    def end(step):
        after.append(rss_bytes() - base)
        if step == cfg.train.steps:
            after.append(peak_rss_bytes() - base)
    trainer.on_step_begin, trainer.on_step_end = begin, end
    trainer.train()
    return {"after_build": built, "after_steps": after[:-1], "peak_during_training": after[-1]}
