"""Images <-> patch vectors (the Transfusion setting's continuous modality), without torch.

Layout (the corpus's and the model's): an image is a [C, H, W] array (VAE latents, or RGB pixels in
[-1, 1]) cut into p x p patches in raster order (row of patches by row of patches); inside a patch the
values run (row, column, channel), channel fastest. So patch k of a [C, gh*p, gw*p] array is row k of
[gh*gw, C*p*p], and `unpatchify` is its exact inverse.

    rows = patchify(latents, patch)                      # [C, H, W] -> [gh*gw, C*p*p]
    latents = unpatchify(rows, channels, patch, grid)    # and back
    rgb = decode_patches(rows, spec, vae_dir)            # -> uint8 [H, W, 3] (pixels, or VAE-decoded latents)

What runs at training and sampling time; reading picture and latent files for a corpus is
corpus_building/image_files.py.
"""
from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import numpy as np

def patchify(x: np.ndarray, patch: int) -> np.ndarray:
    """[C, H, W] -> [(H/p) * (W/p), C*p*p]: raster order of patches, channel-last inside a patch."""
    c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"a [{c}, {h}, {w}] array does not split into {patch} x {patch} patches")
    gh, gw = h // patch, w // patch
    return x.reshape(c, gh, patch, gw, patch).transpose(1, 3, 2, 4, 0).reshape(gh * gw, patch * patch * c)


def unpatchify(rows: np.ndarray, channels: int, patch: int, grid: Sequence[int]) -> np.ndarray:
    """[gh*gw, C*p*p] (or [..., gh*gw, C*p*p]) -> [C, gh*p, gw*p] (or [..., C, gh*p, gw*p])."""
    gh, gw = int(grid[0]), int(grid[1])
    lead = rows.shape[:-2]
    if rows.shape[-2:] != (gh * gw, channels * patch * patch):
        raise ValueError(f"patches of shape {tuple(rows.shape)} are not [..., {gh * gw}, {channels * patch * patch}] "
                         f"(grid {gh}x{gw}, {channels} channels, patch {patch})")
    x = rows.reshape(*lead, gh, gw, patch, patch, channels)
    k = len(lead)
    x = x.transpose(*range(k), k + 4, k, k + 2, k + 1, k + 3)
    return x.reshape(*lead, channels, gh * patch, gw * patch)


def pixels_to_unit(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, H, W] in [-1, 1] (the pixels source and the VAE's input range)."""
    return (np.asarray(rgb, np.float32).transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32)


def unit_to_pixels(x: np.ndarray) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (clipped, rounded to nearest)."""
    x = np.moveaxis(np.asarray(x, np.float32), -3, -1)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_patches(patches, spec, vae_dir: Optional[str] = None) -> np.ndarray:
    """uint8 RGB [H, W, 3] (or [N, H, W, 3] for [N, P, D] patches) of one image's patch vectors.

    `spec` has channels, patch, grid and source (ContinuousSpec, or the config's ContinuousConfig).
    pixels: unpatchify and map [-1, 1] to [0, 255]. latents: unpatchify, undo the VAE's latent
    normalisation (divide by scaling_factor, add the shift) and decode with the AutoencoderKL in `vae_dir`
    (loaded once per process, on the current accelerator or the CPU)."""
    if hasattr(patches, "detach"):
        patches = patches.detach().float().cpu().numpy()
    patches = np.asarray(patches, np.float32)
    single = patches.ndim == 2
    x = unpatchify(patches[None] if single else patches, spec.channels, spec.patch, spec.grid)
    if spec.source == "pixels":
        rgb = unit_to_pixels(x)
    elif spec.source == "latents":
        if vae_dir is None:
            raise ValueError("decoding latents needs the VAE: give vae_dir (the AutoencoderKL directory the "
                             "corpus was encoded with)")
        from . import vae as vae_lib
        rgb = unit_to_pixels(vae_lib.decode(_cached_vae(os.path.realpath(vae_dir)), x))
    else:
        raise ValueError(f"unknown continuous source {spec.source!r}; expected 'latents' or 'pixels'")
    return rgb[0] if single else rgb


@functools.lru_cache(maxsize=2)
def _cached_vae(directory: str):
    from . import vae as vae_lib
    return vae_lib.load_vae(directory)
