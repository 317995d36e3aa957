"""The image VAE of the Transfusion setting: a diffusers AutoencoderKL loaded from a local directory.

    vae = load_vae("vae_dir")                     # refuses a directory that is not an AutoencoderKL, by name
    pixels = decode(vae, latents)                 # normalised latents [N, C, h, w] -> [N, 3, H, W] in [-1, 1]

Sampling decodes here; encoding pictures into a corpus is corpus_building/vae_encode.py.

The latents are the MEAN of the encoder's latent distribution (deterministic: the same image always gives
the same corpus), normalised the way diffusers' pipelines do it, so the diffusion model sees roughly unit
variance: (mean - shift) * scaling_factor, where shift is the config's shift_factor (SD3-style VAEs) or 0,
and per channel (mean - latents_mean) * scaling_factor / latents_std when the config gives those. `decode`
inverts it. Both run batched in float32 on the current accelerator (mot_parallel/distributed/device.py) or
the CPU, convolutions without TF32 (a corpus should not depend on the machine's defaults); nothing is
downloaded (local_files_only).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import numpy as np

from .indexed import DataError


def load_vae(directory: str):
    """AutoencoderKL.from_pretrained(directory), float32, eval mode, on the CPU; DataError if it is not one."""
    return load_diffusers_model(directory, "AutoencoderKL", "--vae", "transfusion")


def load_diffusers_model(directory: str, kind: str, option: str, extra: str):
    """diffusers' `kind` (a class name) from a local save_pretrained directory, float32, eval mode, on the CPU;
    DataError naming `option` if the directory is not one (`extra`: the setup.py extra that installs diffusers)."""
    config = os.path.join(directory, "config.json")
    if not os.path.isdir(directory):
        raise DataError(f"{option} {directory}: not a directory (give a diffusers {kind} saved with save_pretrained)")
    if not os.path.isfile(config):
        sub = os.path.join(directory, "vqvae" if kind == "VQModel" else "vae")
        hint = f"; it looks like a pipeline: give {sub}" if os.path.isfile(os.path.join(sub, "config.json")) else ""
        raise DataError(f"{option} {directory}: no config.json, not a diffusers {kind} directory{hint}")
    try:
        with open(config, encoding="utf-8") as f:
            found = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{option} {config}: not a readable diffusers config ({type(e).__name__})") from None
    if found != kind:
        raise DataError(f"{option} {directory}: config.json describes a {found!r}, not a diffusers {kind}")
    try:
        import diffusers
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        raise DataError(f"{option} needs diffusers: pip install -e '.[{extra}]'") from None
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # no advice about optional packages on every run
    try:
        model = getattr(diffusers, kind).from_pretrained(directory, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:  # noqa: BLE001 - missing or mismatched weights surface as many types
        raise DataError(f"{option} {directory}: {kind}.from_pretrained failed "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return model.float().eval()


def downsampling(vae) -> int:
    """Pixels per latent cell along each side: 2 per down block after the first (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae) -> int:
    return int(vae.config.latent_channels)


def latent_normalisation(vae) -> Tuple[np.ndarray, np.ndarray]:
    """(shift, scale) per latent channel: stored latents = (mean - shift) * scale."""
    cfg, c = vae.config, latent_channels(vae)
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shift = np.asarray(mean, np.float32)
        scale = cfg.scaling_factor / np.asarray(std, np.float32)
    else:
        shift = np.full(c, getattr(cfg, "shift_factor", None) or 0.0, np.float32)
        scale = np.full(c, cfg.scaling_factor, np.float32)
    return shift.reshape(c, 1, 1), scale.reshape(c, 1, 1)


def resolve_device(device):
    if device is not None:
        return device
    from ..distributed.device import current_device  # torch only when a VAE runs
    return current_device()


def exact_fp32():
    """cuDNN convolutions in full float32 (torch lets them use TF32 by default); a no-op on the CPU."""
    import torch
    cudnn = torch.backends.cudnn
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                       allow_tf32=False)


def decode(vae, latents: np.ndarray, batch: int = 16, device: Optional[object] = None) -> np.ndarray:
    """float32 [N, 3, H, W] pixels in [-1, 1] of [N, C, h, w] normalised latents (the inverse of encode)."""
    import torch
    device = resolve_device(device)
    vae.to(device)
    shift, scale = latent_normalisation(vae)
    z = np.asarray(latents, np.float32) / scale + shift
    out = []
    with torch.inference_mode(), exact_fp32():
        for lo in range(0, len(z), batch):
            x = torch.as_tensor(z[lo:lo + batch], device=device)
            out.append(vae.decode(x).sample.float().clamp(-1, 1).cpu().numpy())
    return np.concatenate(out)
