"""Per-rank data loader: one balanced global batch per optimizer step, this rank's micro-batches only.

Every rank runs the same deterministic packer on metadata (so all agree on the global batch without
communicating; numpy over the batch's pieces, DESIGN §20), then reads tokens only for its own cells: cells
are indexed [dp_rank][micro], so DP rank r gets cells r * accum ... r * accum + accum - 1; TP peers of a
DP rank read the same cells.
A background thread plans and reads `prefetch` steps ahead and, when given a `plan_builder`, builds each
micro-batch's routing plan on the host (the model never synchronises to find it).

`state_dict()` is the stream state after the last step handed out, so resuming after step N yields
exactly the batches an uninterrupted run would have seen from step N + 1. With a CorpusSet (several
sources: a blend, or one corpus) it also counts the documents started and tokens packed per source.
"""
from __future__ import annotations

import time
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch

from .batch import MicroBatch, build_micro_batch
from .corpus import Corpus
from .loader_settings import LoaderSettings
from .packing import pack_balanced, pack_sequential
from .stream import DocumentStream


@dataclass
class StepBatch:
    step: int
    micro_batches: List[MicroBatch]
    global_label_counts: torch.Tensor  # [M], the normaliser of this step's loss
    plan_s: float = 0.0                # time spent planning + reading (for the data-time metric)
    source_docs: Optional[List[int]] = None    # per source: documents started so far (cumulative)
    source_tokens: Optional[List[int]] = None  # per source: tokens packed so far (cumulative)


class MoTDataLoader:
    """This rank's batches of `corpus` under `settings` (LoaderSettings); `plan_builder(micro_batch)` builds
    each micro-batch's routing plan on the host, `device` receives the micro-batches, `order(epoch)` overrides
    the document order (datasets.py), `noiser` noises continuous modalities (model/diffusion.py)."""

    def __init__(self, corpus: Corpus, settings: LoaderSettings, *,
                 plan_builder: Optional[Callable[[MicroBatch], object]] = None,
                 device: Optional[torch.device] = None, order: Optional[Callable[[int], np.ndarray]] = None,
                 noiser=None):
        if not isinstance(settings, LoaderSettings):
            raise TypeError(f"MoTDataLoader takes a LoaderSettings (data/loader_settings.py), got "
                            f"{type(settings).__name__}: build one with LoaderSettings(seq_len=..., ...) or "
                            "LoaderSettings.from_config(cfg, layout, dp_rank)")
        self.settings, seed, train = settings, settings.seed, settings.train
        self.corpus, self.seq_len, self.mbs = corpus, settings.seq_len, settings.micro_batch_size
        self.dp_size, self.dp_rank, self.accum = settings.dp_size, settings.dp_rank, settings.grad_accum
        self.balance, self.plan_builder, self.device = settings.balance, plan_builder, device
        self.stream = DocumentStream(corpus, self.seq_len, seed, order)
        self.noiser, self.train = noiser, train  # continuous modalities: host-side noising (model/diffusion.py)
        self.step = 0
        self.sources = len(getattr(corpus, "parts", ())) or None
        self.source_docs = [0] * (self.sources or 0)
        self.source_tokens = [0] * (self.sources or 0)
        self.prefetch, self.num_workers = settings.prefetch, settings.num_workers
        self._queue: Optional[queue.Queue] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._state = self._snapshot()

    # ------------------------------------------------------------------------------------- producing
    def _make(self, pool: ThreadPoolExecutor) -> tuple:
        t = time.perf_counter()
        n_cells = self.dp_size * self.accum
        pack = pack_balanced if self.balance else pack_sequential
        batch = pack(self.stream, n_cells, self.mbs, self.seq_len)
        counts = batch.label_vector(self.corpus)
        step = self.step
        self.step += 1
        mine = range(self.dp_rank * self.accum, (self.dp_rank + 1) * self.accum)

        def one(k):
            mb = build_micro_batch(self.corpus, batch.cell(mine[k]), self.seq_len, counts, step, k,
                                   self.noiser, self.train)
            if self.plan_builder is not None:
                mb.plan = self.plan_builder(mb)
            return mb.to(self.device) if self.device is not None else mb
        micro = list(pool.map(one, range(self.accum)))
        self._count_sources(batch)
        state = self._snapshot()
        return StepBatch(step, micro, torch.as_tensor(counts, dtype=torch.float32), time.perf_counter() - t,
                         list(self.source_docs) or None, list(self.source_tokens) or None), state

    def _count_sources(self, batch) -> None:
        if not self.sources:
            return
        pieces = batch.pieces
        src = self.corpus.source_of(pieces.doc)
        lengths, starts = pieces.length, pieces.start == 0
        tokens = np.bincount(src, lengths, minlength=self.sources).astype(np.int64)
        started = np.bincount(src[starts], minlength=self.sources)
        self.source_tokens = [a + int(b) for a, b in zip(self.source_tokens, tokens)]
        self.source_docs = [a + int(b) for a, b in zip(self.source_docs, started)]

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool:
            while not self._stop.is_set():
                try:
                    item = self._make(pool)
                except BaseException as e:  # noqa: BLE001 - handed to the consumer
                    self._queue.put(e)
                    return
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue

    def __iter__(self):
        return self

    def __next__(self) -> StepBatch:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._run, name="mot-data", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    # ------------------------------------------------------------------------------------- checkpointing
    def _snapshot(self) -> tuple:
        """The producer's state now, cheap to take every step (made into JSON-able lists only when asked)."""
        return self.stream.snapshot(), self.step, list(self.source_docs), list(self.source_tokens)

    def state_dict(self) -> dict:
        """Where the *consumer* is: the state after the last step returned by `next()`."""
        stream, step, docs, tokens = self._state if self._thread is not None else self._snapshot()
        return {"stream": stream.to_dict(), "step": step, "source_docs": list(docs), "source_tokens": list(tokens)}

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("load_state_dict must be called before iterating the loader")
        self.stream.load_state_dict(state["stream"])
        self.step = int(state["step"])
        if self.sources and len(state.get("source_docs", ())) == self.sources:
            self.source_docs, self.source_tokens = list(state["source_docs"]), list(state["source_tokens"])
        self._state = self._snapshot()
