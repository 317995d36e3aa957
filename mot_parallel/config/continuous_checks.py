"""Checks of the continuous modalities (model.continuous) and their diffusion training (diffusion.*)."""
from __future__ import annotations

import math
from typing import List

from .schema import Config


def continuous_errors(cfg: Config) -> List[str]:
    m, d, err = cfg.model, cfg.diffusion, []
    for name, c in m.continuous.items():
        key = f"model.continuous.{name}"
        if name not in m.modalities:
            err.append(f"{key}: {name!r} is not in model.modalities {m.modalities}")
        if c.channels < 1 or c.patch < 1:
            err.append(f"{key}: channels={c.channels} and patch={c.patch} must be >= 1")
        if len(c.grid) != 2 or min(c.grid) < 1:
            err.append(f"{key}.grid={c.grid} must be [height, width] in patches, both >= 1")
        elif m.max_seq_len < c.grid[0] * c.grid[1] + 2:
            err.append(f"model.max_seq_len={m.max_seq_len} cannot hold one {name} ({c.grid[0] * c.grid[1]} patches "
                       "and its BOI/EOI markers); raise it or use a smaller grid")
        if c.patch_encoder == "unet" and (c.unet_channels < 4 or c.unet_channels % 4):
            err.append(f"{key}.unet_channels={c.unet_channels} must be a positive multiple of 4 (GroupNorm groups of "
                       "4 channels)")
        if c.position_embedding == "sincos2d" and m.hidden_size % 4:
            err.append(f"{key}.position_embedding=sincos2d needs model.hidden_size divisible by 4 (a quarter of the "
                       f"width per sine or cosine of the row or column), not {m.hidden_size}")
        for marker in ("boi_token", "eoi_token"):
            value = getattr(c, marker)
            if value is not None and not 0 <= value < m.vocab_size:
                err.append(f"{key}.{marker}={value} is outside the vocabulary [0, {m.vocab_size})")
    if m.continuous:
        if not cfg.data.document_masking:
            err.append("model.continuous needs data.document_masking=true (images attend bidirectionally within "
                       "themselves, a mask built with the document boundaries)")
        if not (math.isfinite(d.loss_weight) and d.loss_weight >= 0):
            err.append(f"diffusion.loss_weight={d.loss_weight} must be a finite number >= 0")
        if d.timesteps < 2:
            err.append(f"diffusion.timesteps={d.timesteps} must be >= 2")
        if not 0 <= d.image_first_max_t <= d.timesteps:
            err.append(f"diffusion.image_first_max_t={d.image_first_max_t} must be in [0, diffusion.timesteps]")
        if not 0.0 <= d.condition_dropout < 1.0:
            err.append(f"diffusion.condition_dropout={d.condition_dropout} must be in [0, 1)")
    if not d.timestep_std > 0:   # NaN is named by the float-key check
        err.append(f"diffusion.timestep_std={d.timestep_std} must be > 0 (the spread of logit(t/T))")
    return err
