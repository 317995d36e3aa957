"""Accelerators and interconnects the planner knows. Every number is an assumption the report prints;
override them on the command line (tools/plan.py --help)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..distributed.accelerators import PEAK_BF16_TFLOPS


@dataclass(frozen=True)
class Hardware:
    name: str
    memory_gb: float          # usable HBM per GPU
    peak_tflops: float        # dense bf16 tensor-core peak (the table of distributed/accelerators.py)
    hbm_gbps: float           # HBM bandwidth, GB/s
    nvlink_gbps: float        # achievable all-reduce bus bandwidth inside a node, GB/s per GPU
    inter_gbps: float         # achievable inter-node bandwidth per GPU (InfiniBand/EFA), GB/s
    gpus_per_node: int = 8
    gemm_efficiency: float = 0.60       # fraction of peak large bf16 GEMMs reach
    attention_efficiency: float = 0.45  # flash attention forward+backward
    dp_overlap: float = 0.8             # fraction of DP/ZeRO communication hidden behind backward
    reserve_gb: float = 3.0             # CUDA context, NCCL buffers, allocator fragmentation
    storage_gbps: float = 2.0           # checkpoint filesystem bandwidth per node, GB/s each way

    def with_(self, **kw) -> "Hardware":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


GPUS = {
    # A100 SXM 80GB: 312 TF bf16, 2.0 TB/s, NVLink3 600 GB/s (~230 GB/s NCCL bus bw), 8x200 Gb/s HDR IB
    "a100-80gb": Hardware("a100-80gb", 80.0, PEAK_BF16_TFLOPS["A100"], 2039.0, 230.0, 23.0),
    # H100 SXM 80GB: 989 TF bf16, 3.35 TB/s, NVLink4 900 GB/s (~360 GB/s bus bw), 8x400 Gb/s NDR IB
    "h100-80gb": Hardware("h100-80gb", 80.0, PEAK_BF16_TFLOPS["H100"], 3350.0, 360.0, 45.0),
}
