"""Search TP x PP x DP x ZeRO x micro-batch x recompute layouts for a GPU count; rank the ones that fit
in memory by estimated tokens/s per GPU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..config.parallel_layout import ParallelLayout
from ..model.settings import ModelSettings
from .estimate import Estimate, estimate
from .hardware import Hardware
from .memory import GB, Memory, memory


@dataclass
class Plan:
    layout: ParallelLayout
    memory: Memory
    estimate: Estimate

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.hardware_memory

    hardware_memory: float = 0.0


def evaluate(s: ModelSettings, L: ParallelLayout, seq: int, hw: Hardware, param_bytes: int = 2) -> Plan:
    mem = memory(s, L, seq, param_bytes, hw.reserve_gb)
    return Plan(L, mem, estimate(s, L, seq, hw, param_bytes), hw.memory_gb * GB)


def candidate_layouts(s: ModelSettings, gpus: int, global_batch: int, hw: Hardware,
                      micro_batches=(1, 2, 4)) -> List[ParallelLayout]:
    out = []
    for tp in (1, 2, 4, 8):
        if tp > hw.gpus_per_node or s.num_heads % tp or s.num_kv_heads % tp or s.ffn_hidden_size % tp:
            continue
        for pp in (1, 2, 4, 8, 16):
            if s.num_layers % pp or gpus % (tp * pp):
                continue
            dp = gpus // (tp * pp)
            for mb in micro_batches:
                if global_batch % (mb * dp):
                    continue
                accum = global_batch // (mb * dp)
                if pp > 1 and accum < pp:
                    continue  # too few micro-batches to fill the pipeline
                for zero in ((0, 1) if pp > 1 else (0, 1, 2, 3)):
                    for recompute in (False, True):
                        out.append(ParallelLayout(tp, pp, dp, micro_batch_size=mb, grad_accum=accum, zero_stage=zero,
                                                  sequence_parallel=True, activation_checkpointing=recompute))
    return out


def search(s: ModelSettings, gpus: int, global_batch: int, seq: int, hw: Hardware, top: Optional[int] = 10,
           param_bytes: int = 2) -> List[Plan]:
    plans = [evaluate(s, L, seq, hw, param_bytes) for L in candidate_layouts(s, gpus, global_batch, hw)]
    fitting = sorted((p for p in plans if p.fits), key=lambda p: -p.estimate.tokens_per_s_per_gpu)
    return fitting[:top] if top else fitting
