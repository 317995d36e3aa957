"""The DeepSpeed JSON, generated in exactly one place from our config (and dumped to the run directory).

`deepspeed:` in the config holds extra DeepSpeed keys, merged over the generated ones; a key that would
contradict the layout (batch sizes, accumulation, ZeRO stage) or another config key is an error naming it,
since DeepSpeed would otherwise train a different batch than the data loader produces. The check itself is
`config.deepspeed_checks.deepspeed_conflicts`, so validation reports it before any process group exists.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch

from ..config import Config, ConfigError, ParallelLayout
from ..config.deepspeed_checks import deepspeed_conflicts


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def deepspeed_config(cfg: Config, layout: ParallelLayout, dtype: torch.dtype, fused_adam: bool = False) -> Dict[str, Any]:
    t, o = cfg.train, cfg.train.optimizer
    zero: Dict[str, Any] = {"stage": layout.zero_stage}
    if layout.zero_stage == 3:
        # gather whole MoT layers (leaf modules), prefetch one layer ahead
        zero.update({"stage3_prefetch_bucket_size": 5e7, "stage3_param_persistence_threshold": 1e5})
    ds = {
        "train_micro_batch_size_per_gpu": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.grad_accum,
        "train_batch_size": layout.global_batch_size,
        "zero_optimization": zero,
        # torch's AdamW: no 90 s CPU-Adam compile on CPU; fused kernels on GPU
        "optimizer": {"type": "AdamW", "params": {"lr": o.lr, "betas": list(o.betas), "eps": o.eps,
                                                  "weight_decay": o.weight_decay, "torch_adam": True,
                                                  **({"fused": True} if fused_adam else {})}},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        # several tensors travel between stages (hidden + routing indices): DeepSpeed's TP partitioning
        # of "the first activation" assumes replicated activations, which SP shards are not
        "pipeline": {"pipe_partitioned": False, "grad_partitioned": False},
        "steps_per_print": 10 ** 9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    # always written: left out, DeepSpeed's default (1.0) would clip a run that asked for grad_clip=0 (off)
    ds["gradient_clipping"] = float(t.grad_clip)
    conflicts = deepspeed_conflicts(cfg, layout)
    if conflicts:
        raise ConfigError("; ".join(conflicts))
    return _merge(ds, cfg.deepspeed or {})
