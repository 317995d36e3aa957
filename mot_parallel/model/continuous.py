"""Continuous modalities (the Transfusion setting): patches in, noise predictions out, the diffusion loss.

In: a modality's noised patches enter through its input projection (patch_dim -> hidden) plus a timestep
embedding (sinusoidal features -> Linear -> SiLU -> Linear), written over that modality's rows of the
embedded stream (their token embeddings are placeholders). Out: after the final norm its rows go through
its output projection (hidden -> patch_dim) to predict the noise; the loss is the MSE per patch (mean over
the patch's values), summed per modality like the LM loss, and weighted by diffusion.loss_weight in the
objective (model.py `objective_weights`).

Under tensor parallelism all three are *replicated*, not sharded: they are small (O(patch_dim x hidden) and
O(hidden^2) once per continuous modality, 0.2% of a 7B model) and act on whole hidden vectors, so sharding
them would add collectives to the embedding and the head. Without sequence parallelism every TP rank holds
every token and computes identical gradients (counted once in the grad norm, as replicated parameters are).
Under SP a rank holds only its shard of the stream, so it projects only its shard's patches: their weights
get partial gradients, tagged `sequence_parallel` and summed over TP like the norms' (grad_sync.py), and the
loss sums of the shards are all-reduced over TP in the forward (identity backward), so every TP rank sees
the whole batch's loss, as with the vocab-parallel cross-entropy. Rows are host ints from the plan
(`RoutingPlan.modality_rows`): no device->host sync.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import collectives as C
from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from ..tensor_parallel import mappings as M
from ..tensor_parallel.param_meta import mark_replicated, mark_sequence_parallel, set_modality
from ..tensor_parallel.weight_init import draw_full, normal_init, param_seed
from .diffusion import timestep_features
from .image_positions import patch_indices, position_table
from .routing import RoutingPlan
from .settings import ContinuousSpec, ModelSettings
from .unet import UNetDown, UNetShape, UNetUp, image_order, to_images, to_rows

TIME_FEATURES = 256


class _Linear(nn.Module):
    """A replicated linear with layout-independent init (its own seeded draw) and the modality's tag."""

    def __init__(self, inp: int, out: int, seed: int, std: float, modality: str, sp: bool, dtype, device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out, inp, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out, dtype=dtype, device=device))
        if self.weight.device.type != "meta":
            with torch.no_grad():
                self.weight.copy_(draw_full((out, inp), normal_init(std), seed))
        for p in (self.weight, self.bias):
            mark_replicated(p)
            set_modality(p, modality)
            if sp:  # each TP rank saw only its shard's tokens: partial gradients, summed over TP
                mark_sequence_parallel(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _time_mlp(owner: nn.Module, s: ModelSettings, c: ContinuousSpec, seed: int, sp: bool, device) -> None:
    """The modality's timestep embedding: sinusoidal features -> Linear -> SiLU -> Linear (hidden)."""
    kw = dict(std=s.init_std, modality=c.name, sp=sp, dtype=s.params_dtype, device=device)
    owner.time_in[c.name] = _Linear(TIME_FEATURES, s.hidden_size, param_seed(seed, "time_in"), **kw)
    owner.time_out[c.name] = _Linear(s.hidden_size, s.hidden_size, param_seed(seed, "time_out"), **kw)


def _time_embedding(owner: nn.Module, name: str, t: torch.Tensor, dtype) -> torch.Tensor:
    feats = timestep_features(t, TIME_FEATURES, owner.settings.diffusion_timesteps).to(dtype)
    return owner.time_out[name](F.silu(owner.time_in[name](feats)))


def _modules(s: ModelSettings, c: ContinuousSpec, seed: int, sp: bool, device, up: bool) -> nn.Module:
    """A modality's patch projection (linear) or U-Net path, with its own init seeds and tags."""
    h = s.hidden_size
    if c.unet:
        unet = UNetUp if up else UNetDown
        extra = dict(out_std=s.init_std) if up else {}
        return unet(UNetShape(c.channels, c.patch, c.unet_channels, h), param_seed(seed, "unet"), (c.name, sp),
                    s.params_dtype, device, **extra)
    shape = (h, c.patch_dim) if up else (c.patch_dim, h)
    return _Linear(*shape, param_seed(seed, "proj") if not up else seed, s.init_std, c.name, sp, s.params_dtype,
                   device)


class ContinuousEmbedding(nn.Module):
    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS, device=None):
        super().__init__()
        s, sp = settings, parallel.sequence_parallel
        self.settings = s
        self.proj, self.unet, self.time_in, self.time_out = (nn.ModuleDict() for _ in range(4))
        for c in s.continuous:
            seed = param_seed(s.seed, f"embedding.continuous.{c.name}")
            (self.unet if c.unet else self.proj)[c.name] = _modules(s, c, seed, sp, device, up=False)
            _time_mlp(self, s, c, seed, sp, device)
        self.position_tables = {}   # modality -> its fixed 2-D position table (image_positions.py), built lazily

    def forward(self, x: torch.Tensor, plan: RoutingPlan, inputs: Sequence) -> torch.Tensor:
        """x: the embedded stream [n, h] (grouped order, this rank's shard); inputs[k]: (x_t [n_k, D], t [n_k])
        of continuous modality k, in grouped order. Returns x with those modalities' rows replaced."""
        pieces, cursor = [], 0
        for c, (x_t, t) in zip(self.settings.continuous, inputs):
            m = self.settings.modalities.index(c.name)
            rows, own = plan.modality_rows(m)
            if plan.counts[m] == 0:  # not `own` rows: every TP rank must touch the weights alike (their SP
                continue             # gradients are summed over TP as they are produced, in the same order)
            # whole images, in raster order: what the U-Net convolves and what a patch's position is read from
            whole = c.unet or c.position_embedding != "none"
            order = image_order(plan, m, c.num_patches, x.device) if whole else None
            vec = self._unet(c, x_t, t, order, x.dtype)[own] if c.unet else \
                self.proj[c.name](x_t[own].to(x.dtype)) + _time_embedding(self, c.name, t[own], x.dtype)
            if c.position_embedding == "sincos2d":
                vec = vec + self._positions(c, order, x)[own]
            pieces += [x[cursor:rows.start], vec]
            cursor = rows.stop
        return torch.cat(pieces + [x[cursor:]]) if pieces else x

    def _positions(self, c: ContinuousSpec, order: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The modality's rows' 2-D position embeddings [n_m, h] (grouped order, all ranks' rows; `order`:
        unet.image_order); the fixed table is built once per modality, outside the state dict (it is no
        parameter, and a meta-device build would leave a non-persistent buffer uninitialised)."""
        table = self.position_tables.get(c.name)
        if table is None or table.device != x.device or table.dtype != x.dtype:
            table = position_table(c.grid, self.settings.hidden_size, self.settings.init_std, c.patch_dim)
            table = self.position_tables[c.name] = table.to(x.device, x.dtype)
        return table.index_select(0, patch_indices(order, c.num_patches))

    def _unet(self, c: ContinuousSpec, x_t, t, order: torch.Tensor, dtype) -> torch.Tensor:
        """Every image of the modality (all ranks' rows, gathered by `order`: a convolution needs the whole image)
        through the down blocks, plus the timestep embedding: [n_m, h] in the modality's grouped order."""
        emb = _time_embedding(self, c.name, t[order].view(-1, c.num_patches)[:, 0], dtype)
        out = self.unet[c.name](to_images(x_t[order].to(dtype), c.channels, c.patch, c.grid), emb)
        rows = (out + emb[:, :, None, None]).permute(0, 2, 3, 1).reshape(-1, self.settings.hidden_size)
        return rows.index_select(0, torch.argsort(order))


class ContinuousHead(nn.Module):
    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS, device=None):
        super().__init__()
        s = self.settings = settings
        self.parallel, self.sp = parallel, parallel.sequence_parallel
        self.proj, self.unet, self.time_in, self.time_out = (nn.ModuleDict() for _ in range(4))
        for c in s.continuous:
            seed = param_seed(s.seed, f"head.continuous.{c.name}")
            (self.unet if c.unet else self.proj)[c.name] = _modules(s, c, seed, self.sp, device, up=True)
            if c.unet:  # the up blocks' own timestep embedding (a pipeline's last stage holds no embedding)
                _time_mlp(self, s, c, seed, self.sp, device)

    def predict(self, h: torch.Tensor, plan: RoutingPlan, inputs: Sequence = ()) -> List[Tuple[slice, torch.Tensor]]:
        """Per continuous modality: (its rows among the modality's own tokens, the predicted noise there);
        `inputs[k]`: modality k's (noised patches, timesteps) in grouped order (all ranks' rows), which a U-Net
        decoder is conditioned on (a linear head reads neither)."""
        out = []
        for k, c in enumerate(self.settings.continuous):
            m = self.settings.modalities.index(c.name)
            rows, own = plan.modality_rows(m)
            out.append((own, self._unet(c, h, plan, m, *inputs[k][:2])[own] if c.unet else self.proj[c.name](h[rows])))
        return out

    def _unet(self, c: ContinuousSpec, h, plan: RoutingPlan, m: int, x_t, t) -> torch.Tensor:
        """Noise predictions [n_m, D] for every patch of modality m (grouped order). Under SP the stream is
        gathered first (every rank runs the up blocks on whole images and keeps its own rows' predictions;
        backward reduce-scatters the partial gradients), on every TP rank alike, even one without own rows."""
        start, n = sum(plan.counts[:m]), plan.counts[m]
        if n == 0:
            return h.new_zeros(0, c.patch_dim)
        full = M.gather_from_sp_region(h, self.parallel.tp_group, plan.sp_sizes) if plan.sequence_parallel else h
        order = image_order(plan, m, c.num_patches, h.device)
        emb = _time_embedding(self, c.name, t[order].view(-1, c.num_patches)[:, 0], h.dtype)
        x = full[start:start + n].index_select(0, order).view(-1, c.grid[0], c.grid[1], self.settings.hidden_size)
        noised = to_images(x_t[order].to(h.dtype), c.channels, c.patch, c.grid)
        out = self.unet[c.name](x.permute(0, 3, 1, 2), emb, noised)
        return to_rows(out, c.patch).index_select(0, torch.argsort(order))


def diffusion_loss(preds: Sequence[Tuple[slice, torch.Tensor]], targets: Sequence[torch.Tensor],
                   settings: ModelSettings, parallel: ParallelContext):
    """(loss sums [M], counts [M]): per continuous modality k the summed per-patch MSE of its predictions
    (`preds[k]`: rows among the modality's tokens, predicted noise) against its noise `targets[k]` [n_k, D]
    (grouped order); zero for discrete modalities. Under SP a rank held its shard's patches only: the sums
    are all-reduced over TP (identity backward), so every TP rank sees the whole batch's."""
    m = settings.num_modalities
    device = targets[0].device if targets else torch.device("cpu")
    ids = torch.tensor(settings.continuous_ids(), device=device)
    sums, counts = [], []
    for (own, pred), eps in zip(preds, targets):
        err = (pred.float() - eps[own].float()).pow(2).mean(dim=-1)
        sums.append(err.sum())
        counts.append(float(err.shape[0]))
    loss_sum = torch.zeros(m, device=device).index_put((ids,), torch.stack(sums))
    count = torch.zeros(m, device=device).index_put((ids,), torch.tensor(counts, device=device))
    if parallel.sequence_parallel:
        loss_sum = M.reduce_from_tp_region(loss_sum, parallel.tp_group)
        C.all_reduce(count, parallel.tp_group)
    return loss_sum, count


def _flat_rows(plan: RoutingPlan, m: int, device) -> torch.Tensor:
    """Flat (s-major) indices of modality m's tokens, in grouped order."""
    start, n = sum(plan.counts[:m]), plan.counts[m]
    return plan.perm[start:start + n] if plan.perm is not None else torch.arange(start, start + n, device=device)


def decoder_grids(settings: ModelSettings, plan: RoutingPlan, inputs: Sequence) -> Tuple[torch.Tensor, ...]:
    """What U-Net decoders need on a pipeline's last stage, as fixed-shape integer tensors (a stage boundary
    carries the same shapes every micro-batch, and integers no gradient): the timesteps [s * b] (flat order,
    -1 at other tokens) and per continuous modality its noised patches [s * b, D], float32 bits as int32."""
    device = inputs[0][1].device
    t_grid = torch.full((plan.num_tokens,), -1, dtype=torch.long, device=device)
    grids = []
    for m, c, (x_t, t) in zip(settings.continuous_ids(), settings.continuous, inputs):
        rows = _flat_rows(plan, m, device)
        t_grid[rows] = t.long()
        x = torch.zeros(plan.num_tokens, c.patch_dim, dtype=torch.float32, device=device)
        x[rows] = x_t.float()
        grids.append(x.view(torch.int32))
    return (t_grid, *grids)


def inputs_from_grids(settings: ModelSettings, plan: RoutingPlan, grids: Sequence[torch.Tensor]) -> List[tuple]:
    """Inverse of decoder_grids: per continuous modality (noised patches, timesteps) in grouped order."""
    out = []
    for m, x in zip(settings.continuous_ids(), grids[1:]):
        rows = _flat_rows(plan, m, x.device)
        out.append((x.view(torch.float32).index_select(0, rows), grids[0].index_select(0, rows)))
    return out
