"""Pictures to VAE latents for a corpus (tools/preprocess_data.py): the inverse of data/vae.py `decode`.

    latents = encode(vae, pixels)                 # float [N, 3, H, W] in [-1, 1] -> [N, C, H/f, W/f]

The latents are the mean of the encoder's distribution, normalised as data/vae.py describes.
"""
from __future__ import annotations

import numpy as np

from ..data.vae import exact_fp32, latent_normalisation, resolve_device


def encode(vae, pixels: np.ndarray, batch: int = 16, device=None) -> np.ndarray:
    """float32 [N, C, h, w] latents of float [N, 3, H, W] pixels in [-1, 1], `batch` images at a time."""
    import torch
    device = resolve_device(device)
    vae.to(device)
    shift, scale = latent_normalisation(vae)
    out = []
    with torch.inference_mode(), exact_fp32():
        for lo in range(0, len(pixels), batch):
            x = torch.as_tensor(np.asarray(pixels[lo:lo + batch], np.float32), device=device)
            out.append(vae.encode(x).latent_dist.mean.float().cpu().numpy())
    return (np.concatenate(out) - shift) * scale
