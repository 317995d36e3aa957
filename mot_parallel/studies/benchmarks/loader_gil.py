"""The data loader's thread against the training loop, by simulation (tools/bench_loader.py --simulate).

The loader plans and reads in a background thread of the training process, and Python lets one thread run
Python at a time (the GIL). A training step's host side is mostly Python holding the GIL (module code, kernel
launches), then waiting for the device (the GIL released). So a loader busy in Python at large DP slows the
host side of every step, and the device starves once the host falls behind. The simulation: a main loop whose
step is `host_ms` of pure-Python work (holding the GIL) then `device_ms` of waiting (releasing it), fed by a
real MoTDataLoader over a length-profile corpus (tokens synthesised, so reading costs what it costs) at the
given layout; the loop's host time per step with the loader thread running is compared with the same loop
over pre-made batches (no thread), interleaved step by step, and the loader's own time per step is reported.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, Tuple

import numpy as np

from ...data.corpus import SegmentTable
from ...data.loader import MoTDataLoader
from ...data.loader_settings import LoaderSettings


class ProfileCorpus(SegmentTable):
    """A SegmentTable whose reads synthesise tokens (every token 1): the loader's full path without a corpus."""

    def read(self, doc: int, start: int, end: int) -> Tuple[np.ndarray, np.ndarray]:
        return np.ones(end - start, np.int64), self.modality_ids(doc, start, end)


def _spin(ms: float, rate: float) -> None:
    """Pure-Python work holding the GIL for about `ms` (rate: loop iterations per ms, calibrated)."""
    x = 0
    for i in range(int(ms * rate)):
        x += i & 7


def calibrate(ms: float = 50.0) -> float:
    n, t = 200_000, time.perf_counter()
    _spin(n / 1000.0, 1000.0)
    return n / ((time.perf_counter() - t) * 1e3)


def _host_step(host_ms: float, device_ms: float, rate: float) -> float:
    t = time.perf_counter()
    _spin(host_ms, rate)
    host = time.perf_counter() - t
    time.sleep(device_ms / 1e3)
    return host


def simulate(table: SegmentTable, layout: dict, steps: int, host_ms: float, device_ms: float, seed: int = 0
             ) -> Dict[str, float]:
    """Host ms per step with the loader thread running against the same loop with no thread (before and
    after: medians), their ratio; the loop's whole step (host + device + waiting for data) likewise; the
    loader's own ms per step (plan + read, in its thread: wall, and the CPU it took, which a busy machine
    does not inflate)."""
    corpus = ProfileCorpus(table.seg_len, table.seg_mode, table.doc_seg, table.modalities,
                           [m for m, a in zip(table.modalities, table.atomic) if a])
    rate = calibrate()
    alone = [_host_step(host_ms, device_ms, rate) for _ in range(steps)]
    settings = LoaderSettings(seq_len=layout["seq_len"], micro_batch_size=layout["micro_batch_size"],
                              grad_accum=layout["micro_batches"], seed=seed, dp_size=layout["dp"], prefetch=2)
    loader = MoTDataLoader(corpus, settings)
    next(loader)  # start-up
    shared, wait, loader_ms = [], [], []
    cpu, mine = time.process_time(), time.thread_time()  # the loader's CPU: the process's less this thread's
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(loader)  # frees a slot: the thread plans the next step while this one runs
        wait.append(time.perf_counter() - t)
        loader_ms.append(batch.plan_s)
        shared.append(_host_step(host_ms, device_ms, rate))
    loader_cpu = (time.process_time() - cpu) - (time.thread_time() - mine)
    loader.close()
    alone += [_host_step(host_ms, device_ms, rate) for _ in range(steps)]
    med = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    step_alone, step_shared = med(alone) + device_ms, med([h + w for h, w in zip(shared, wait)]) + device_ms
    return {"host_ms_alone": round(med(alone), 1), "host_ms_with_loader": round(med(shared), 1),
            "host_slowdown": round(med(shared) / med(alone), 3), "data_wait_ms": round(med(wait), 1),
            "step_ms_alone": round(step_alone, 1), "step_ms_with_loader": round(step_shared, 1),
            "step_slowdown": round(step_shared / step_alone, 3), "loader_ms_per_step": round(med(loader_ms), 1),
            "loader_cpu_ms_per_step": round(1e3 * loader_cpu / steps, 1),
            "host_ms": host_ms, "device_ms": device_ms, "steps": steps, "layout": dict(layout)}
