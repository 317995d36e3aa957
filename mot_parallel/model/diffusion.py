"""DDPM for continuous modalities (Transfusion): the cosine schedule, noising on the host, the loss, DDIM steps.

Training draws, per image, a timestep t uniform in [0, T), or with `diffusion.timestep_sampling: logit_normal`
t/T = sigmoid(mean + std z) (SD3's; mean > 0 spends more of training at high noise, where a small object's place
is decided), scaled below `image_first_max_t` for an image that opens its document (noise limiting, so a caption
that follows is learnt from a recognisable image), and noise eps ~ N(0, I); the model sees x_t = sqrt(abar_t)
x_0 + sqrt(1 - abar_t) eps and predicts, under MSE, either eps (`diffusion.prediction: epsilon`, Transfusion's)
or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (`v`, Salimans & Ho 2022). Why v exists: at high noise the clean
picture implied by an eps prediction is (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar), which multiplies the
prediction's error by up to 1/sqrt(abar) (~40 at t = 0.9 T, unbounded at T - 1), while an eps loss weighs those
steps as any other; a small model then learns low-noise denoising and samples speckle, because DDIM's first
steps decide the layout from exactly those amplified estimates. A v loss is the x_0 error weighted by 1 + SNR,
never less than 1, so the layout is learnt (docs/transfusion.md measures both). Both draws come from a generator
seeded by the image's identity (seed, step, document, segment), never by the rank that happens to read it, so
every layout trains on exactly the same noise. The same generator decides condition dropout (the image does not
see the text before it), which classifier-free guidance needs at sampling.
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


PREDICTIONS = ("epsilon", "v")   # what the model predicts (diffusion.prediction)


@dataclass(frozen=True)
class Noised:
    x_t: np.ndarray        # [P, D] float32
    target: np.ndarray     # [P, D] float32: the noise eps, or v (diffusion.prediction)
    t: int
    drop_condition: bool


class Noiser:
    """Host-side noising of one image's patches, deterministic in the image's identity."""

    def __init__(self, timesteps: int, image_first_max_t: int, condition_dropout: float, seed: int,
                 patch_dims: Optional[Dict[int, int]] = None, prediction: str = "epsilon",
                 logit_normal: Optional[Tuple[float, float]] = None):
        if prediction not in PREDICTIONS:
            raise ValueError(f"diffusion prediction {prediction!r} is not one of {PREDICTIONS}")
        self.patch_dims = dict(patch_dims or {})     # modality id -> patch values (for empty micro-batches)
        self.prediction = prediction
        self.logit_normal = logit_normal             # (mean, std) of logit(t / T), or None: uniform t
        self.alpha_bar = cosine_alpha_bar(timesteps)
        self.timesteps, self.first_max, self.dropout, self.seed = timesteps, image_first_max_t, condition_dropout, seed

    def __call__(self, x0: np.ndarray, step: int, doc: int, segment: int, image_first: bool,
                 train: bool = True) -> Noised:
        g = np.random.default_rng([self.seed, 0x6469666675, step, doc, segment])
        top = self.first_max if (image_first and self.first_max > 0) else self.timesteps
        t = self._timestep(g, top)
        drop = bool(g.random() < self.dropout) and train
        eps = g.standard_normal(x0.shape, dtype=np.float32)
        a = self.alpha_bar[t]
        x_t = (math.sqrt(a) * x0 + math.sqrt(1 - a) * eps).astype(np.float32)
        target = eps if self.prediction == "epsilon" else \
            (math.sqrt(a) * eps - math.sqrt(1 - a) * x0).astype(np.float32)   # v
        return Noised(x_t, target, t, drop)

    def _timestep(self, g: np.random.Generator, top: int) -> int:
        """t in [0, top): uniform, or top * sigmoid(mean + std z) (logit-normal)."""
        if self.logit_normal is None:
            return int(g.integers(0, top))
        mean, std = self.logit_normal
        x = mean + std * float(g.standard_normal())
        # the sigmoid in the form whose exp cannot overflow: any finite mean and std the config accepts
        u = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
        return min(int(u * top), top - 1)


def noiser_for(cfg, settings) -> Optional[Noiser]:
    """The data loader's noiser for a config (None without continuous modalities)."""
    if not settings.continuous:
        return None
    d = cfg.diffusion
    dims = {settings.modalities.index(c.name): c.patch_dim for c in settings.continuous}
    return Noiser(d.timesteps, d.image_first_max_t, d.condition_dropout, cfg.train.seed, dims, d.prediction,
                  (d.timestep_mean, d.timestep_std) if d.timestep_sampling == "logit_normal" else None)


def timestep_features(t: torch.Tensor, dim: int, timesteps: int) -> torch.Tensor:
    """Sinusoidal features [n, dim] of integer timesteps [n] (DiT's, scaled so t spans [0, 1000))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().unsqueeze(-1) * (1000.0 / timesteps) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def clean_and_noise(x_t: torch.Tensor, out: torch.Tensor, a_t: float, prediction: str = "epsilon",
                    clip: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x_0, eps) implied by the model's output `out` at x_t (abar = a_t): `out` is eps or v (PREDICTIONS).
    `clip` > 0 clamps x_0 to [-clip, clip] (pixels live in [-1, 1]; an eps prediction's x_0 divides by
    sqrt(abar) ~ 0 at high t) and re-derives eps from the clamped x_0, as DDPM/DDIM reference implementations do."""
    if prediction == "v":   # no division: x_0 = sqrt(a) x_t - sqrt(1 - a) v, eps = sqrt(1 - a) x_t + sqrt(a) v
        x0, eps = math.sqrt(a_t) * x_t - math.sqrt(1 - a_t) * out, math.sqrt(1 - a_t) * x_t + math.sqrt(a_t) * out
    else:
        x0, eps = (x_t - math.sqrt(1 - a_t) * out) / math.sqrt(a_t), out
    if clip > 0:
        x0 = x0.clamp(-clip, clip)
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return x0, eps


def ddim_step(x_t: torch.Tensor, out: torch.Tensor, t: int, t_prev: int, alpha_bar: np.ndarray,
              clip: float = 0.0, prediction: str = "epsilon") -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from t to t_prev (t_prev < 0: the clean sample), given the
    model's output `out` (eps or v) at x_t; `clip` as clean_and_noise."""
    x0, eps = clean_and_noise(x_t, out, float(alpha_bar[t]), prediction, clip)
    a_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
    return math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps


def ddim_sample(predict, x_T: torch.Tensor, alpha_bar: np.ndarray, steps: int, clip: float = 0.0,
                prediction: str = "epsilon", on_step=None) -> torch.Tensor:
    """Deterministic DDIM from pure noise `x_T` in `steps` steps; `predict(x_t, t)` is the model (its output
    eps or v, as `prediction` says). `on_step(t, x0)`, if given, sees each step's clean estimate: where a
    sample commits to its layout (tools/sample.py --trajectory)."""
    schedule = ddim_timesteps(len(alpha_bar), steps)
    x = x_T
    for i, t in enumerate(schedule):
        t_prev = schedule[i + 1] if i + 1 < len(schedule) else -1
        out = predict(x, t)
        if on_step is not None:
            on_step(t, clean_and_noise(x, out, float(alpha_bar[t]), prediction, clip)[0])
        x = ddim_step(x, out, t, t_prev, alpha_bar, clip, prediction)
    return x


def ddim_timesteps(timesteps: int, steps: int) -> Tuple[int, ...]:
    """`steps` timesteps from T-1 down to 0, evenly spaced."""
    return tuple(int(round(x)) for x in np.linspace(timesteps - 1, 0, steps))
