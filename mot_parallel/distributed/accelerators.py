"""The one table of accelerator facts: dense bf16 tensor-core peaks (TFLOP/s) by device name.

MFU (training/trainer.py, tools/bench_layer.py) and the planner's hardware models (planner/hardware.py) read
their peaks here; `logging.peak_tflops` (or a tool's --peak-tflops) overrides the table for a device it lacks.
"""
from __future__ import annotations

from typing import Optional

PEAK_BF16_TFLOPS = {"A100": 312.0, "A800": 312.0, "H100": 989.0, "H800": 989.0, "H200": 989.0, "H20": 148.0,
                    "L40S": 362.0, "A10": 125.0, "B200": 2250.0, "GB200": 2500.0}


def peak_tflops(device_name: str) -> Optional[float]:
    """The table entry whose key appears in the device name (longest match), or None (e.g. CPU)."""
    hits = [k for k in PEAK_BF16_TFLOPS if k in device_name.upper()]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None
