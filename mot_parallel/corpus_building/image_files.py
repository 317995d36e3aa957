"""Picture and latent files as tools/preprocess_data.py reads them into a corpus (never at training time).

`read_image` reads a picture: Pillow, EXIF orientation applied, converted to RGB (alpha dropped, grey
expanded), scaled so it covers the target size (bicubic) and centre-cropped. `read_latents` / `read_npy`
read precomputed arrays without unpickling; `bad_values` says why an array cannot be stored.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

FLOAT16_MAX = float(np.finfo(np.float16).max)


def read_image(path, size: Tuple[int, int]) -> np.ndarray:
    """uint8 RGB [height, width, 3] of an image file (a path or a binary file object), scaled to cover `size`
    (height, width) and centre-cropped. Raises ValueError with a one-line reason for a file Pillow cannot read."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = ImageOps.fit(img.convert("RGB"), (size[1], size[0]), method=Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except MemoryError:  # not the file's fault: the size asked for
        raise ValueError(f"out of memory scaling it to {size[1]} x {size[0]} pixels; use a smaller --image-size"
                         ) from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on a bad file; all mean "unreadable"
        raise ValueError(f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None


def read_latents(path, shape: Tuple[int, int, int]) -> np.ndarray:
    """float32 [C, H, W] from a .npy file (a path or a binary file object; never unpickled); ValueError names
    what is wrong."""
    x = read_npy(path)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"holds {x.dtype} values; latents are floating point")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"has shape {list(x.shape)}, expected [channels, height, width] = {list(shape)}")
    return np.asarray(x, dtype=np.float32)


def read_npy(path) -> np.ndarray:
    """One array from a .npy file (a path: memory-mapped; or a binary file object), never unpickled."""
    try:
        x = np.load(path, allow_pickle=False, mmap_mode="r" if isinstance(path, str) else None)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         ) from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        x.close()
        raise ValueError("is an .npz archive; give one .npy array per image")
    return x


def bad_values(x: np.ndarray, dtype: str) -> Optional[str]:
    """Why `x` cannot be stored as `dtype` (NaN/inf, or beyond float16's range), or None."""
    finite = np.isfinite(x)
    if not finite.all():
        at = np.unravel_index(int(np.flatnonzero(~finite.ravel())[0]), x.shape)
        return f"holds NaN or inf (first at index {list(map(int, at))})"
    if dtype == "float16" and x.size and float(np.abs(x).max()) > FLOAT16_MAX:
        return (f"holds {float(np.abs(x).max()):.4g}, beyond the float16 range (+-{FLOAT16_MAX:.0f}); "
                "use --continuous-dtype float32")
    return None