"""What tools/preprocess_data.py makes of each continuous (image) modality: `ImageSpec`, resolved from the
options, the config's model.continuous and the VAE, which must all agree.

Each of channels, patch, grid, source and the BOI/EOI ids may come from an option (--channels, --patch,
--grid, --source, --boi-token, --eoi-token), from the config, from the VAE (latent channels) or from
--image-size (grid = image size / (VAE downsampling x patch); 1 instead of the downsampling for pixels).
Every source that gives a value must give the same one, else a DataError names both; a value nobody
gives is an error naming the option. Pixels have 3 channels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..data import vae as vae_lib
from ..data.indexed import DataError
from ..model.settings import ContinuousSpec


@dataclass(frozen=True)
class ImageSpec(ContinuousSpec):
    """One continuous modality as the preprocessor writes it: the model's layout of it (ContinuousSpec:
    name, channels, patch, grid, source, BOI/EOI) plus how image files become patches."""
    image_size: Optional[Tuple[int, int]] = None   # pixels an image file is scaled to; None: image files refused
    encode: bool = False                           # image files go through the VAE
    dtype: str = "float16"                         # storage dtype of the patch file
    vae: Optional[str] = None                      # the VAE directory (recorded in the sidecar, for decoding)

    @property
    def array_shape(self) -> Tuple[int, int, int]:
        """[C, H, W] of one image before patchify (latent cells, or pixels)."""
        return self.channels, self.grid[0] * self.patch, self.grid[1] * self.patch

    def sidecar(self) -> dict:
        """The corpus sidecar's continuous entry (ContinuousWriter adds dtype and rows)."""
        return {"patch_dim": self.patch_dim, "channels": self.channels, "patch": self.patch,
                "grid": list(self.grid), "source": self.source, "vae": self.vae,
                "image_size": list(self.image_size) if self.image_size else None,
                "boi_token": self.boi_token, "eoi_token": self.eoi_token}


def agree(what: str, candidates: Sequence[Tuple[str, object]]):
    """The one value every (label, value) with a value gives, or None; DataError if two differ."""
    given = [(label, v) for label, v in candidates if v is not None]
    for label, v in given[1:]:
        if v != given[0][1]:
            raise DataError(f"{what}: {given[0][0]} gives {given[0][1]}, but {label} gives {v}; make them agree")
    return given[0][1] if given else None


MAX_IMAGE_SIDE = 8192  # pixels (or latent cells) per side: 200 MB of float32 RGB; Pillow's bomb limit is ~9,459^2


def size_pair(values: Optional[Sequence[int]], option: str) -> Optional[Tuple[int, int]]:
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) < 1:
        raise DataError(f"{option} takes one or two positive integers (height [width]), got {list(values)}")
    return (int(values[0]), int(values[-1]))


def continuous_names(args, cfg, modalities: Sequence[str], code_images: bool = False) -> List[str]:
    """The continuous modalities: --continuous, or the config's model.continuous (both: the same set).
    `code_images`: a discrete image modality takes --grid, --image-size and the BOI/EOI options too."""
    configured = list(cfg.model.continuous) if cfg is not None else None
    names = args.continuous if args.continuous is not None else (configured or [])
    if args.continuous is not None and configured is not None and set(args.continuous) != set(configured):
        raise DataError(f"--continuous {' '.join(args.continuous)} disagrees with model.continuous "
                        f"({', '.join(configured) or 'none'}) in {args.config}")
    for name in names:
        if name not in modalities:
            raise DataError(f"--continuous {name}: not one of the modalities {list(modalities)}")
    if len(set(names)) != len(names):
        raise DataError(f"--continuous {' '.join(names)} lists a modality twice")
    shared = () if code_images else ("grid", "image_size", "boi_token", "eoi_token")
    image_options = [o for o in ("source", "channels", "patch", "vae") + shared if getattr(args, o) is not None]
    if image_options and not names:
        raise DataError(f"--{image_options[0].replace('_', '-')} is for continuous modalities, and none is "
                        "declared (--continuous NAME or model.continuous in --config)")
    return list(names)


def resolve(args, cfg, name: str, vae=None) -> ImageSpec:
    """The ImageSpec of continuous modality `name` (see the module docstring)."""
    base = cfg.model.continuous.get(name) if cfg is not None else None
    key = f"model.continuous.{name}"
    conf = (lambda field: (f"{key}.{field} in {args.config}", getattr(base, field) if base else None))
    source = agree(f"{name} source", [("--source", args.source), conf("source")]) or \
        ("latents" if args.vae else None)
    if source is None:
        raise DataError(f"{name}: give --source latents (VAE latents) or --source pixels (RGB), or --config")
    encode = source == "latents" and vae is not None
    if source == "pixels" and vae is not None:
        raise DataError(f"--vae given, but {name} is stored as pixels (source pixels); drop --vae or use latents")
    channels = agree(f"{name} channels", [
        ("--channels", args.channels), conf("channels"),
        ("the VAE's latent_channels", vae_lib.latent_channels(vae) if encode else None),
        ("RGB pixels", 3 if source == "pixels" else None)])
    patch = agree(f"{name} patch", [("--patch", args.patch), conf("patch")])
    if channels is None or patch is None:
        raise DataError(f"{name}: give --{'channels' if channels is None else 'patch'} (or --config)")
    factor = 1 if source == "pixels" else (vae_lib.downsampling(vae) if encode else None)
    image_size = size_pair(args.image_size, "--image-size")
    from_size = None
    if image_size is not None:
        if factor is None:
            raise DataError(f"--image-size: {name} takes precomputed latents (no --vae), whose size is the "
                            "grid's; give --grid instead")
        if image_size[0] % (factor * patch) or image_size[1] % (factor * patch):
            raise DataError(f"--image-size {image_size[0]} {image_size[1]} is not a multiple of "
                            f"{factor * patch} ({'VAE downsampling ' + str(factor) + ' x ' if factor > 1 else ''}"
                            f"patch {patch})")
        from_size = [image_size[0] // (factor * patch), image_size[1] // (factor * patch)]
    grid = agree(f"{name} grid (patches per image)", [
        ("--grid", list(size_pair(args.grid, "--grid")) if args.grid else None),
        (conf("grid")[0], list(base.grid) if base else None), ("--image-size", from_size)])
    if grid is None:
        raise DataError(f"{name}: give --grid or --image-size (or --config)")
    side = max(grid) * patch * (factor or 1)
    if side > MAX_IMAGE_SIDE:  # before any work: one such image alone would take gigabytes
        raise DataError(f"{name}: an image side of {side} {'pixels' if factor else 'latent cells'} (from --image-size, "
                        f"--grid or {key}.grid) exceeds {MAX_IMAGE_SIDE}; give a smaller --image-size or --grid")
    markers = [agree(f"{name} {m}", [(f"--{m.replace('_', '-')}", getattr(args, m)), conf(m)])
               for m in ("boi_token", "eoi_token")]
    return ImageSpec(name, int(channels), int(patch), (int(grid[0]), int(grid[1])), source, markers[0], markers[1],
                     image_size=(grid[0] * patch * factor, grid[1] * patch * factor) if factor else None,
                     encode=encode, dtype=args.continuous_dtype, vae=os.path.abspath(args.vae) if encode else None)


def marker_modality(specs: Dict[str, ImageSpec], modalities: Sequence[str], vocab_size: int) -> Optional[int]:
    """The modality id BOI/EOI markers are written in: the first discrete modality (text); None without markers."""
    ids = [(s.name, m, v) for s in specs.values() for m, v in (("boi", s.boi_token), ("eoi", s.eoi_token)) if v is not None]
    if not ids:
        return None
    for name, m, v in ids:
        if not 0 <= v < vocab_size:
            raise DataError(f"{name} {m} token {v} is outside the vocabulary [0, {vocab_size})")
    discrete = [i for i, n in enumerate(modalities) if n not in specs]
    if not discrete:
        raise DataError("BOI/EOI markers are text tokens, but every modality is continuous; add a discrete one")
    return discrete[0]
