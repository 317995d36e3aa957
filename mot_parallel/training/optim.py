"""Optimizer parameter groups and the learning-rate schedule.

Groups: weight decay only on matrices of linear layers (never on norms, biases or embeddings; decided by
the parameter's shape and metadata, not its name, which differs between layouts), and an
LR multiplier per modality (`train.optimizer.modality_lr_scale`) for that modality's own copies
(their modality in the parameter's metadata); a scale of 0 freezes a modality. The schedule multiplies each group's base LR,
so ratios between groups survive warm-up and decay.
"""
from __future__ import annotations

import math
from typing import Dict, List

from torch import nn

from ..config import Config
from ..tensor_parallel.param_meta import decays, modality_of


def param_groups(model: nn.Module, cfg: Config) -> List[Dict]:
    o = cfg.train.optimizer
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        modality = modality_of(p)
        scale = o.modality_lr_scale.get(modality, 1.0) if modality else 1.0
        decay = 0.0 if not decays(p) else o.weight_decay
        key = (decay, scale)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": decay, "lr": o.lr * scale}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, cfg: Config) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): linear warm-up, then decay."""
    s, total = cfg.train.lr_schedule, cfg.train.steps
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.decay == "constant":
        return 1.0
    progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if s.decay == "cosine" else 1.0 - progress
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * shape


class WarmupDecayLR:
    """DeepSpeed-compatible LR scheduler (step / get_last_lr / state_dict / load_state_dict)."""

    def __init__(self, optimizer, cfg: Config):
        self.optimizer, self.cfg = optimizer, cfg
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        f = lr_factor(self.last_step, self.cfg)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self, epoch=None, **lr_kwargs) -> None:
        """One optimizer step (DeepSpeed calls step(**lr_kwargs), lr_kwargs empty unless engine.step is given
        some). The schedule counts steps itself: an explicit epoch or keyword is refused by name, not ignored."""
        given = sorted(k for k, v in dict(lr_kwargs, epoch=epoch).items() if v is not None)
        if given:
            raise ValueError(f"WarmupDecayLR.step() takes no {', '.join(given)}: the schedule follows the optimizer "
                             "steps it has seen (train.lr_schedule); call step() once per optimizer step")
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict:
        return {"last_step": self.last_step, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: Dict) -> None:
        self.last_step, self.base_lrs = int(state["last_step"]), list(state["base_lrs"])
        self._apply()
