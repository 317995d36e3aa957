"""U-Net patch encoder and decoder of a continuous modality (Transfusion, Zhou et al. 2024, §3.2 and §4.4).

`patch_encoder: unet` replaces the linear patch projection by U-Net down blocks before the transformer and
up blocks after it (the transformer takes the place of the U-Net's middle), both conditioned on the
diffusion timestep:

  down  image [n, C, H, W] -> 3x3 conv to c0 -> per step f of the patch side (its prime factors: 8 = 2x2x2)
        a ResBlock, then an f x f stride-f conv (width doubles) -> a ResBlock at patch resolution -> 1x1 conv
        to the hidden size: one transformer vector per p x p patch;
  up    the transformer's patch vectors -> 1x1 conv -> per step, in reverse, a ResBlock and an f x f
        stride-f transposed conv (width halves) -> + a 3x3 conv of the noised image (the input skip) -> a
        ResBlock -> GroupNorm, SiLU, 3x3 conv to C, + a 1x1 conv of the noised image: the noise prediction.
ResBlock (improved DDPM's, Nichol & Dhariwal): GroupNorm, SiLU, 3x3 conv, GroupNorm scaled and shifted by
a projection of the timestep embedding, SiLU, 3x3 conv, + the input. The down path's features do not bypass the transformer (a pipeline
stage boundary would have to carry them, with their gradients, at every resolution); the noised image does,
as data: predicting per-pixel noise needs the noisy pixels themselves, and one transformer vector per patch
holds fewer numbers than the patch whenever hidden < C p^2 (the demo: 128 < 192), so without it the decoder
could not reproduce the noise (measured: the image loss stayed at ~1.0 where the linear encoder's fell).
The skip enters twice: into the full-resolution ResBlock (so the noise can be separated from the image the
transformer describes) and linearly at the output. The linear one matters at high noise, where the noise is
nearly the noised image itself and DDIM divides the error of copying it by sqrt(abar_t) ~ 0.2: through the
normalised, SiLU-gated path alone the copy kept 1.7% error at t = 999, and sampled pictures stayed noise.

The convolutions see across patch borders, which the per-patch linear projection cannot: that is the
inductive bias the paper credits for the U-Net's better images at every model size, and for its robustness
to larger patches (fewer tokens per image), with the gain shrinking as the transformer grows.

Images are whole inside a micro-batch (pieces never cut one, data/corpus.py), so `image_order` can gather a
modality's rows (grouped order) into images: sorted by (column, position), every `num_patches` rows are one
image in raster order. Parameters are replicated over TP, like the linear projection's (model/continuous.py).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..tensor_parallel.param_meta import mark_replicated, mark_sequence_parallel, set_modality
from ..tensor_parallel.weight_init import draw_full, normal_init, param_seed
from .routing import RoutingPlan

def groups(c: int) -> int:
    """GroupNorm groups of a c-channel feature map: 4 channels a group, at most 32 groups (DDPM's 32)."""
    return max(1, min(32, c // 4))


def factors(patch: int) -> List[int]:
    """The downsampling steps of a patch side: its prime factors, smallest first (8 -> [2, 2, 2])."""
    out, n, f = [], patch, 2
    while n > 1:
        while n % f:
            f += 1
        out.append(f)
        n //= f
    return out


def widths(base: int, patch: int) -> List[int]:
    """Channel width at each resolution, full first: base, doubling per downsampling step."""
    return [base * 2 ** i for i in range(len(factors(patch)) + 1)]


class _Params(nn.Module):
    """Parameters with layout-independent seeded init, tagged replicated (partial-gradient under SP)."""

    def __init__(self, seed: int, tags: Tuple[str, bool], dtype, device):
        super().__init__()
        self._seed, self._tags, self._dtype, self._device = seed, tags, dtype, device

    def param(self, name: str, shape, std: float = 0.0, fill: float = 0.0) -> nn.Parameter:
        p = nn.Parameter(torch.full(tuple(shape), fill, dtype=self._dtype, device=self._device))
        if std > 0 and p.device.type != "meta":
            with torch.no_grad():
                p.copy_(draw_full(shape, normal_init(std), param_seed(self._seed, name)))
        mark_replicated(p)
        set_modality(p, self._tags[0])
        if self._tags[1]:
            mark_sequence_parallel(p)
        self.register_parameter(name, p)
        return p


class _Conv(_Params):
    transposed = False

    def __init__(self, cin: int, cout: int, k: int, seed: int, tags, dtype, device, std: float = 0.0):
        super().__init__(seed, tags, dtype, device)
        self.k = k
        shape = (cin, cout, k, k) if self.transposed else (cout, cin, k, k)
        self.param("weight", shape, std or 1.0 / math.sqrt(cin * k * k))
        self.param("bias", (cout,))

    def forward(self, x, stride: int = 1):
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, self.bias, stride=stride)
        return F.conv2d(x, self.weight, self.bias, stride=stride, padding=(self.k - 1) // 2 if stride == 1 else 0)


class _ConvTranspose(_Conv):
    transposed = True


class _Norm(_Params):
    def __init__(self, c: int, seed: int, tags, dtype, device):
        super().__init__(seed, tags, dtype, device)
        self.param("weight", (c,), fill=1.0)
        self.param("bias", (c,))

    def forward(self, x):
        return F.group_norm(x, groups(x.shape[1]), self.weight, self.bias)


class ResBlock(nn.Module):
    def __init__(self, c: int, emb: int, seed: int, tags, dtype, device):
        super().__init__()
        kw = dict(tags=tags, dtype=dtype, device=device)
        self.norm1, self.norm2 = _Norm(c, param_seed(seed, "norm1"), **kw), _Norm(c, param_seed(seed, "norm2"), **kw)
        self.conv1 = _Conv(c, c, 3, param_seed(seed, "conv1"), **kw)
        self.conv2 = _Conv(c, c, 3, param_seed(seed, "conv2"), **kw)
        self.emb = _Conv(emb, 2 * c, 1, param_seed(seed, "emb"), **kw)

    def forward(self, x, emb):
        """x [n, c, H, W], emb [n, E] (the image's timestep embedding), which scales and shifts the normalised
        features (Nichol & Dhariwal's scale-shift norm: added before a GroupNorm, as in DDPM, a per-channel
        offset would be normalised away when a group holds few channels)."""
        scale, shift = self.emb(emb[:, :, None, None]).chunk(2, dim=1)
        h = self.norm2(self.conv1(F.silu(self.norm1(x)))) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


def _blocks(c: List[int], steps: List[int], emb: int, seed: int, kw, transposed: bool):
    res = nn.ModuleList(ResBlock(w, emb, param_seed(seed, f"res{i}"), **kw) for i, w in enumerate(c))
    scale = nn.ModuleList(_ConvTranspose(c[i + 1], c[i], f, param_seed(seed, f"up{i}"), **kw) if transposed
                          else _Conv(c[i], c[i + 1], f, param_seed(seed, f"down{i}"), **kw)
                          for i, f in enumerate(steps))
    return res, scale


class UNetShape(NamedTuple):
    """What sizes a U-Net path: image channels C, patch side p, full-resolution width, transformer width."""
    channels: int
    patch: int
    base: int
    hidden: int


class UNetDown(nn.Module):
    """Image [n, C, p*gh, p*gw] + timestep embedding [n, E] -> patch vectors [n, hidden, gh, gw]."""

    def __init__(self, shape: UNetShape, seed: int, tags, dtype, device):
        super().__init__()
        channels, patch, base, hidden = shape
        kw = dict(tags=tags, dtype=dtype, device=device)
        self.steps, c = factors(patch), widths(base, patch)
        self.conv_in = _Conv(channels, c[0], 3, param_seed(seed, "conv_in"), **kw)
        self.res, self.down = _blocks(c, self.steps, hidden, seed, kw, transposed=False)
        self.proj = _Conv(c[-1], hidden, 1, param_seed(seed, "proj"), **kw)

    def forward(self, x, emb):
        h = self.conv_in(x)
        for res, down, f in zip(self.res, self.down, self.steps):
            h = down(res(h, emb), stride=f)
        return self.proj(self.res[-1](h, emb))


class UNetUp(nn.Module):
    """Patch vectors [n, hidden, gh, gw] + timestep embedding [n, E] + the noised image [n, C, p*gh, p*gw]
    (the input skip) -> noise [n, C, p*gh, p*gw]."""

    def __init__(self, shape: UNetShape, seed: int, tags, dtype, device, out_std: float):
        super().__init__()
        channels, patch, base, hidden = shape
        kw = dict(tags=tags, dtype=dtype, device=device)
        self.steps, c = factors(patch), widths(base, patch)
        self.proj = _Conv(hidden, c[-1], 1, param_seed(seed, "proj"), **kw)
        self.res, self.up = _blocks(c, self.steps, hidden, seed, kw, transposed=True)
        self.skip = _Conv(channels, c[0], 3, param_seed(seed, "skip"), **kw)
        self.skip_out = _Conv(channels, channels, 1, param_seed(seed, "skip_out"), **kw)
        self.norm_out = _Norm(c[0], param_seed(seed, "norm_out"), **kw)
        self.conv_out = _Conv(c[0], channels, 3, param_seed(seed, "conv_out"), std=out_std, **kw)

    def forward(self, x, emb, x_t):
        h = self.proj(x)
        for i in reversed(range(len(self.steps))):
            h = self.up[i](self.res[i + 1](h, emb), stride=self.steps[i])
        h = self.res[0](h + self.skip(x_t), emb)   # full resolution: the noised image joins
        return self.conv_out(F.silu(self.norm_out(h))) + self.skip_out(x_t)


def image_order(plan: RoutingPlan, m: int, num_patches: int, device) -> torch.Tensor:
    """Indices that gather modality m's rows (its grouped slice, all ranks' tokens) image by image, each
    image's patches in raster order: [n_images * num_patches]. Sorting by (column, position) keeps an image's
    patches together because an image is a run of consecutive positions in one column."""
    start, n = sum(plan.counts[:m]), plan.counts[m]
    if n % num_patches:
        raise ValueError(f"modality {m} has {n} patch tokens in this micro-batch, not whole images of "
                         f"{num_patches} patches: an image was cut (a sequence shorter than an image?)")
    flat = plan.perm[start:start + n] if plan.perm is not None else torch.arange(start, start + n, device=device)
    return torch.argsort((flat % plan.batch) * plan.seq_len + flat // plan.batch)


def to_images(rows: torch.Tensor, channels: int, patch: int, grid) -> torch.Tensor:
    """[n * gh * gw, C p^2] patch rows (images.patchify layout) -> [n, C, gh p, gw p]."""
    gh, gw = grid
    x = rows.reshape(-1, gh, gw, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, gh * patch, gw * patch)


def to_rows(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of to_images."""
    n, c, hh, ww = images.shape
    x = images.reshape(n, c, hh // patch, patch, ww // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, patch * patch * c)


def unet_flops(channels: int, patch: int, base: int, hidden: int, grid, up: bool = False) -> int:
    """Forward FLOPs (2 per multiply-add, convolutions only) of the down or the up path for one image (they
    mirror each other; the up path adds the input skip's 3x3 conv)."""
    c, steps = widths(base, patch), factors(patch)
    px = grid[0] * grid[1] * patch * patch
    flops = 2 * 9 * channels * c[0] * px * (2 if up else 1) + 2 * c[-1] * hidden * grid[0] * grid[1]
    flops += 2 * channels * channels * px if up else 0   # the output's 1x1 input skip
    res = lambda w, n: 2 * 2 * 9 * w * w * n + 2 * hidden * 2 * w  # noqa: E731  two 3x3 convs, scale and shift
    for i, f in enumerate(steps):
        flops += res(c[i], px) + 2 * c[i] * c[i + 1] * px  # the stride-f conv: f^2 c_i c_i+1 per output pixel
        px //= f * f
    return flops + res(c[-1], px)


def unet_param_shapes(prefix: str, channels: int, patch: int, base: int, hidden: int, up: bool) -> Dict[str, tuple]:
    """Full name -> shape of every parameter of a UNetDown (up=False) or UNetUp under `prefix`."""
    c, steps = widths(base, patch), factors(patch)
    out = {}

    def conv(name, cin, cout, k, transposed=False):
        out[f"{prefix}.{name}.weight"] = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        out[f"{prefix}.{name}.bias"] = (cout,)

    def norm(name, w):
        out[f"{prefix}.{name}.weight"] = out[f"{prefix}.{name}.bias"] = (w,)
    for i, w in enumerate(c):
        norm(f"res.{i}.norm1", w)
        norm(f"res.{i}.norm2", w)
        conv(f"res.{i}.conv1", w, w, 3)
        conv(f"res.{i}.conv2", w, w, 3)
        conv(f"res.{i}.emb", hidden, 2 * w, 1)
    for i, f in enumerate(steps):
        if up:
            conv(f"up.{i}", c[i + 1], c[i], f, transposed=True)
        else:
            conv(f"down.{i}", c[i], c[i + 1], f)
    if up:
        conv("proj", hidden, c[-1], 1)
        conv("skip", channels, c[0], 3)
        conv("skip_out", channels, channels, 1)
        norm("norm_out", c[0])
        conv("conv_out", c[0], channels, 3)
    else:
        conv("conv_in", channels, c[0], 3)
        conv("proj", c[-1], hidden, 1)
    return out
