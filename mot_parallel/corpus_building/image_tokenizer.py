"""Discrete image tokens (the Chameleon setting): a diffusers VQModel turns a picture into a grid of codebook ids.

    vq = load_vq("vq_dir")                        # refuses a directory that is not a VQModel, by name
    codes = encode_codes(vq, rgb)                 # uint8 [N, H, W, 3] -> int64 [N, H/f, W/f] codebook ids
    rgb = decode_codes(vq, codes)                 # and back to uint8 pixels (the VQ's reconstruction)

The codes are the nearest codebook entries of the encoder's output (VQModel.quantize, as diffusers computes them),
read in raster order (row by row): the corpus stores code k of an image at its position k, offset into the image
modality's token range. Both directions run batched in float32, pixels in [-1, 1] as the VQ was trained on, on
the current accelerator or the CPU (mot_parallel/distributed/device.py); nothing is downloaded.
"""
from __future__ import annotations

import functools
import hashlib
import os

import numpy as np

from ..data.images import pixels_to_unit, unit_to_pixels
from ..data.vae import exact_fp32, load_diffusers_model, resolve_device

VQ_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_vq(directory: str, option: str = "--image-tokenizer"):
    """VQModel.from_pretrained(directory), float32, eval mode; DataError if it is not one."""
    return load_diffusers_model(directory, "VQModel", option, "data")


def codebook_size(vq) -> int:
    return int(vq.config.num_vq_embeddings)


def downsampling(vq) -> int:
    """Pixels per code along each side: 2 per down block after the first."""
    return 2 ** (len(vq.config.block_out_channels) - 1)


def vq_hash(directory: str) -> str:
    """sha256 over the VQ's config and weights (recorded in the sidecar; decoding refuses another VQ)."""
    h = hashlib.sha256()
    for name in VQ_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            h.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def encode_codes(vq, rgb: np.ndarray, batch: int = 16, device=None) -> np.ndarray:
    """int64 [N, h, w] codebook ids of uint8 RGB pictures [N, H, W, 3]."""
    import torch
    device = resolve_device(device)
    vq.to(device)
    out = []
    with torch.inference_mode(), exact_fp32():
        for lo in range(0, len(rgb), batch):
            x = torch.as_tensor(np.stack([pixels_to_unit(p) for p in rgb[lo:lo + batch]]), device=device)
            h = vq.encode(x).latents
            _, _, (_, _, ids) = vq.quantize(h)
            out.append(ids.reshape(h.shape[0], h.shape[2], h.shape[3]).cpu().numpy().astype(np.int64))
    return np.concatenate(out)


def decode_codes(vq, codes: np.ndarray, batch: int = 16, device=None) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] of codebook ids [N, h, w] (the VQ decoder's reconstruction)."""
    import torch
    device = resolve_device(device)
    vq.to(device)
    codes = np.asarray(codes, np.int64)
    out = []
    with torch.inference_mode(), exact_fp32():
        for lo in range(0, len(codes), batch):
            ids = torch.as_tensor(codes[lo:lo + batch], device=device)
            n, h, w = ids.shape
            shape = (n, h, w, vq.quantize.vq_embed_dim)
            if vq.config.lookup_from_codebook:
                x = vq.decode(ids.reshape(-1), force_not_quantize=True, shape=shape).sample
            else:
                z = vq.quantize.get_codebook_entry(ids.reshape(-1), shape)
                x = vq.decode(z, force_not_quantize=True).sample
            out.append(x.float().clamp(-1, 1).cpu().numpy())
    return unit_to_pixels(np.concatenate(out))


@functools.lru_cache(maxsize=2)
def cached_vq(directory: str):
    return load_vq(directory)
