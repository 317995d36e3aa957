"""The data loader's settings: one record, built in one place from the config and the layout.

    settings = LoaderSettings.from_config(cfg, layout, dp_rank=topo.dp_rank)
    loader = MoTDataLoader(corpus, settings, plan_builder=..., device=..., order=..., noiser=...)

Every rank of a run holds the same settings but its own `dp_rank`, so all ranks pack the same global
batch (dp_size x grad_accum cells of micro_batch_size sequences of seq_len tokens) and read their own cells.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoaderSettings:
    seq_len: int
    micro_batch_size: int     # sequences per micro-batch
    grad_accum: int           # micro-batches per optimizer step on each data-parallel rank
    seed: int                 # the document order's seed (data.order / blends draw from it)
    dp_size: int = 1
    dp_rank: int = 0
    balance: bool = True      # per-modality balanced packing (packing.py); False: sequential
    prefetch: int = 2         # optimizer steps of batches prepared ahead by the background thread
    num_workers: int = 1      # threads reading a step's micro-batches
    train: bool = True        # False: validation batches (images noised without condition dropout)

    def __post_init__(self):
        for name in ("seq_len", "micro_batch_size", "grad_accum", "dp_size", "prefetch", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LoaderSettings.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.dp_rank, bool) or not isinstance(self.dp_rank, int) or \
                not 0 <= self.dp_rank < self.dp_size:
            raise ValueError(f"LoaderSettings.dp_rank must be in [0, dp_size={self.dp_size}), got {self.dp_rank!r}")

    @classmethod
    def from_config(cls, cfg, layout, dp_rank: int, train: bool = True) -> "LoaderSettings":
        """The settings of this rank's loader: shapes from `layout` (config.ParallelLayout), the rest from
        `cfg`; `train=False` for the validation loader."""
        return cls(seq_len=cfg.model.max_seq_len, micro_batch_size=layout.micro_batch_size,
                   grad_accum=layout.grad_accum, seed=cfg.train.seed, dp_size=layout.dp, dp_rank=dp_rank,
                   balance=cfg.data.balance, prefetch=cfg.data.prefetch, num_workers=cfg.data.num_workers,
                   train=train)
