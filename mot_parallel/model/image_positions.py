"""Where a patch sits in its image: a fixed 2-D sine-cosine embedding of its (row, column), added to the patch's
input vector (`model.continuous.<m>.position_embedding: sincos2d`).

Why: the transformer's only positions are RoPE's, 1-D and reset per document, so a patch's row and column are
known only from its offset to the image's BOI marker, and the offset to BOI differs between a caption -> image
and an image -> caption document. A model must learn to read them off attention before it can put ink in
"the top half" or keep a shape's pixels together across patch borders. DiT (Peebles & Xie 2023) adds this
embedding to every patch; the Transfusion paper does not (its default here, 'none').

The table is DiT's: half the width encodes the row, half the column, each as sin/cos of the index at
frequencies 1/10000^(i/(w/4)). It is fixed (no parameter: nothing to shard, save or convert, the same in every
layout) and scaled to the root-mean-square of a patch projection's output at initialisation
(init_std * sqrt(patch_dim)), so content and position enter the first norm at comparable size.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch


def sincos_2d(grid: Tuple[int, int], width: int) -> torch.Tensor:
    """[gh * gw, width] float32, raster order; width a multiple of 4."""
    if width % 4:
        raise ValueError(f"a 2-D sine-cosine position embedding needs a width divisible by 4, not {width}")
    quarter = width // 4
    freqs = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")

    def axis(index: torch.Tensor) -> torch.Tensor:
        args = index.reshape(-1, 1) * freqs
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.cat([axis(rows), axis(cols)], dim=1).float()


def position_table(grid: Tuple[int, int], width: int, init_std: float, patch_dim: int) -> torch.Tensor:
    """sincos_2d scaled to RMS init_std * sqrt(patch_dim) (sin/cos have RMS 1/sqrt(2))."""
    return sincos_2d(grid, width) * (init_std * math.sqrt(patch_dim) * math.sqrt(2.0))


def patch_indices(order: torch.Tensor, num_patches: int) -> torch.Tensor:
    """For each of a modality's rows (grouped order, all ranks' tokens): its patch's raster index in its image,
    given `order` (unet.image_order: the rows image by image, each in raster order)."""
    index = torch.empty_like(order)
    index[order] = torch.arange(order.numel(), device=order.device) % num_patches
    return index
