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
from .routing import RoutingPlan
from .settings import ModelSettings

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


class ContinuousEmbedding(nn.Module):
    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS, device=None):
        super().__init__()
        s, sp = settings, parallel.sequence_parallel
        self.settings = s
        self.proj, self.time_in, self.time_out = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for c in s.continuous:
            seed = param_seed(s.seed, f"embedding.continuous.{c.name}")
            kw = dict(std=s.init_std, modality=c.name, sp=sp, dtype=s.params_dtype, device=device)
            self.proj[c.name] = _Linear(c.patch_dim, s.hidden_size, param_seed(seed, "proj"), **kw)
            self.time_in[c.name] = _Linear(TIME_FEATURES, s.hidden_size, param_seed(seed, "time_in"), **kw)
            self.time_out[c.name] = _Linear(s.hidden_size, s.hidden_size, param_seed(seed, "time_out"), **kw)

    def forward(self, x: torch.Tensor, plan: RoutingPlan, inputs: Sequence) -> torch.Tensor:
        """x: the embedded stream [n, h] (grouped order, this rank's shard); inputs[k]: (x_t [n_k, D], t [n_k])
        of continuous modality k, in grouped order. Returns x with those modalities' rows replaced."""
        pieces, cursor = [], 0
        for c, (x_t, t) in zip(self.settings.continuous, inputs):
            rows, own = plan.modality_rows(self.settings.modalities.index(c.name))
            if rows.stop == rows.start:
                continue
            temb = self.time_out[c.name](F.silu(self.time_in[c.name](
                timestep_features(t[own], TIME_FEATURES, self.settings.diffusion_timesteps).to(x.dtype))))
            pieces += [x[cursor:rows.start], (self.proj[c.name](x_t[own].to(x.dtype)) + temb)]
            cursor = rows.stop
        return torch.cat(pieces + [x[cursor:]]) if pieces else x


class ContinuousHead(nn.Module):
    def __init__(self, settings: ModelSettings, parallel: ParallelContext = SINGLE_PROCESS, device=None):
        super().__init__()
        s = self.settings = settings
        self.parallel, self.sp = parallel, parallel.sequence_parallel
        self.proj = nn.ModuleDict({c.name: _Linear(
            s.hidden_size, c.patch_dim, param_seed(s.seed, f"head.continuous.{c.name}"), s.init_std, c.name, self.sp,
            s.params_dtype, device) for c in s.continuous})

    def predict(self, h: torch.Tensor, plan: RoutingPlan) -> List[Tuple[slice, torch.Tensor]]:
        """Per continuous modality: (its rows among the modality's own tokens, the predicted noise there)."""
        out = []
        for c in self.settings.continuous:
            rows, own = plan.modality_rows(self.settings.modalities.index(c.name))
            out.append((own, self.proj[c.name](h[rows])))
        return out


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
