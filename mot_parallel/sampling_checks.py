"""What a sampling request must satisfy (generation.py, tools/sample.py), checked before the model runs: a bad
request is one `SamplingError` naming the argument, never a NaN picture, an IndexError deep in the embedding or
a multi-gigabyte allocation."""
from __future__ import annotations

import math
from typing import Sequence


class SamplingError(ValueError):
    """A sampling request the model cannot serve; the message names the argument and the fix."""


def check_ids(settings, ids: Sequence[int], what: str) -> None:
    """Token ids inside the model's vocabulary."""
    bad = [i for i in ids if not 0 <= int(i) < settings.vocab_size]
    if bad:
        raise SamplingError(f"{what}: token ids {bad[:5]} are outside the vocabulary [0, {settings.vocab_size})")


def check_image_request(settings, caption: Sequence[int], modality: str, steps: int, cfg_scale: float) -> None:
    """A DDIM request: a continuous modality of the model, 1..timesteps steps, a finite guidance scale."""
    if settings.spec(modality) is None:
        have = [c.name for c in settings.continuous]
        raise SamplingError(f"this model has no continuous {modality!r} modality (continuous: {have or 'none'}): "
                            "pictures need a Transfusion checkpoint (model.continuous); use --prompt for text")
    check_ids(settings, caption, "the caption")
    if not 1 <= int(steps) <= settings.diffusion_timesteps:
        raise SamplingError(f"--steps {steps}: DDIM takes 1 to {settings.diffusion_timesteps} steps (the model's "
                            "diffusion.timesteps)")
    if not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale)):
        raise SamplingError(f"--cfg {cfg_scale}: the guidance scale must be a finite number (1 = no guidance)")


def check_finite(values, what: str) -> None:
    """A sample the model produced holds only finite numbers (else the checkpoint is broken: say so)."""
    import torch
    if not bool(torch.isfinite(values).all()):
        raise SamplingError(f"{what} holds NaN or inf: the checkpoint's weights (or --cfg) give no usable sample")
