"""DeepSpeed keys that would contradict the layout or another key (the `deepspeed:` config section): one check
used by validation (before any process group) and by the DeepSpeed JSON generator, so the two never disagree."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .parallel_layout import ParallelLayout
from .schema import Config


def _deepspeed_owned(cfg: Config, layout: Optional[ParallelLayout]) -> Dict[Tuple[str, ...], Tuple[Any, str]]:
    """DeepSpeed keys our config decides: key path -> (the value we generate, the config key that sets it).
    Without a layout (no world size yet) the batch keys cannot be known and are left out."""
    t, o = cfg.train, cfg.train.optimizer
    owned = {("zero_optimization", "stage"): (cfg.parallel.zero_stage, "parallel.zero_stage"),
             ("gradient_clipping",): (t.grad_clip, "train.grad_clip"),
             ("optimizer", "type"): ("adamw", "train.optimizer.name"),
             ("optimizer", "params", "lr"): (o.lr, "train.optimizer.lr"),
             ("optimizer", "params", "betas"): (list(o.betas), "train.optimizer.betas"),
             ("optimizer", "params", "eps"): (o.eps, "train.optimizer.eps"),
             ("optimizer", "params", "weight_decay"): (o.weight_decay, "train.optimizer.weight_decay")}
    if layout is not None:
        owned.update({("train_micro_batch_size_per_gpu",): (layout.micro_batch_size, "train.micro_batch_size"),
                      ("gradient_accumulation_steps",): (layout.grad_accum, "train.global_batch_size"),
                      ("train_batch_size",): (layout.global_batch_size, "train.global_batch_size")})
    if t.precision != "auto":  # 'auto' is decided by the device, at start-up
        owned[("bf16", "enabled")] = (t.precision == "bf16", "train.precision")
        owned[("fp16", "enabled")] = (t.precision == "fp16", "train.precision")
    return owned


def deepspeed_conflicts(cfg: Config, layout: Optional[ParallelLayout] = None) -> List[str]:
    """Keys under `deepspeed:` that contradict the layout or another config key (DeepSpeed would train another
    batch or optimizer than the loader and the schedule assume), or that DeepSpeed would ignore."""
    extra, err = cfg.deepspeed or {}, []
    if "scheduler" in extra:
        err.append("deepspeed.scheduler is ignored (the run passes its own schedule); use train.lr_schedule")
    for path, (ours, owner) in _deepspeed_owned(cfg, layout).items():
        node, where = extra, "deepspeed"
        for part in path:
            if not isinstance(node, dict):
                err.append(f"{where} must be a mapping, got {node!r}")
                break
            if part not in node:
                break
            node, where = node[part], f"{where}.{part}"
        else:
            same = node.lower() == ours if isinstance(node, str) else node == ours
            if not same:
                err.append(f"{where}={node} contradicts {owner} (which gives {ours}); set {owner} instead")
    return sorted(set(err))
