"""DDPM for continuous modalities (Transfusion): the cosine schedule, noising on the host, the loss, DDIM steps.

Training draws, per image, a timestep t uniform in [0, T) (capped below `image_first_max_t` for an image
that opens its document: noise limiting, so a caption that follows is learnt from a recognisable image)
and noise eps ~ N(0, I); the model sees x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps and predicts eps
(MSE). Both draws come from a generator seeded by the image's identity (seed, step, document, segment),
never by the rank that happens to read it, so every layout trains on exactly the same noise. The same
generator decides condition dropout (the image does not see the text before it), which classifier-free
guidance needs at sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> np.ndarray:
    """abar_t for t = 0..T-1 (Nichol & Dhariwal 2021), float64; betas clipped at 0.999 as theirs are."""
    f = lambda t: math.cos((t / timesteps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f(t + 1) / f(t), 0.999) for t in range(timesteps)])
    return np.cumprod(1.0 - betas)


@dataclass(frozen=True)
class Noised:
    x_t: np.ndarray        # [P, D] float32
    eps: np.ndarray        # [P, D] float32, the target
    t: int
    drop_condition: bool


class Noiser:
    """Host-side noising of one image's patches, deterministic in the image's identity."""

    def __init__(self, timesteps: int, image_first_max_t: int, condition_dropout: float, seed: int,
                 patch_dims: Optional[Dict[int, int]] = None):
        self.patch_dims = dict(patch_dims or {})     # modality id -> patch values (for empty micro-batches)
        self.alpha_bar = cosine_alpha_bar(timesteps)
        self.timesteps, self.first_max, self.dropout, self.seed = timesteps, image_first_max_t, condition_dropout, seed

    def __call__(self, x0: np.ndarray, step: int, doc: int, segment: int, image_first: bool,
                 train: bool = True) -> Noised:
        g = np.random.default_rng([self.seed, 0x6469666675, step, doc, segment])
        top = self.first_max if (image_first and self.first_max > 0) else self.timesteps
        t = int(g.integers(0, top))
        drop = bool(g.random() < self.dropout) and train
        eps = g.standard_normal(x0.shape, dtype=np.float32)
        a = self.alpha_bar[t]
        return Noised((math.sqrt(a) * x0 + math.sqrt(1 - a) * eps).astype(np.float32), eps, t, drop)


def noiser_for(cfg, settings) -> Optional[Noiser]:
    """The data loader's noiser for a config (None without continuous modalities)."""
    if not settings.continuous:
        return None
    d = cfg.diffusion
    dims = {settings.modalities.index(c.name): c.patch_dim for c in settings.continuous}
    return Noiser(d.timesteps, d.image_first_max_t, d.condition_dropout, cfg.train.seed, dims)


def timestep_features(t: torch.Tensor, dim: int, timesteps: int) -> torch.Tensor:
    """Sinusoidal features [n, dim] of integer timesteps [n] (DiT's, scaled so t spans [0, 1000))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * (1000.0 / timesteps) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, alpha_bar: np.ndarray,
              clip: float = 0.0) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from t to t_prev (t_prev < 0: the clean sample). `clip` > 0
    clamps the predicted clean sample to [-clip, clip] (pixels live in [-1, 1]): at large t the estimate
    divides by sqrt(abar_t) ~ 0 and would otherwise amplify the noise prediction's error without bound;
    eps is then re-derived from the clamped estimate, as in DDPM/DDIM reference implementations."""
    a_t = float(alpha_bar[t])
    a_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


def ddim_sample(predict_eps, x_T: torch.Tensor, alpha_bar: np.ndarray, steps: int, clip: float = 0.0) -> torch.Tensor:
    """Deterministic DDIM from pure noise `x_T` in `steps` steps; `predict_eps(x_t, t)` is the model."""
    schedule = ddim_timesteps(len(alpha_bar), steps)
    x = x_T
    for i, t in enumerate(schedule):
        x = ddim_step(x, predict_eps(x, t), t, schedule[i + 1] if i + 1 < len(schedule) else -1, alpha_bar, clip)
    return x


def ddim_timesteps(timesteps: int, steps: int) -> Tuple[int, ...]:
    """`steps` timesteps from T-1 down to 0, evenly spaced."""
    return tuple(int(round(x)) for x in np.linspace(timesteps - 1, 0, steps))
