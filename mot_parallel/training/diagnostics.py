"""Optional training diagnostics (`logging.diagnostics: true`): the numbers that would show an instability.

On logging steps only (every `logging.interval` steps and the last), added to that step's metrics record
(metrics.jsonl and TensorBoard):
  diag/max_logit/layer<N>/<q>-<k>  the largest pre-softmax attention logit q.k/sqrt(d) (after QK-norm and
                                   RoPE) among the (query, key) pairs the mask allows, for queries of modality
                                   q and keys of modality k, over every micro-batch, head and rank
  diag/max_logit/<q>-<k>           the same, max over layers;  diag/max_logit/layer<N>: max over pairs
  diag/grad_norm/<group>           norm of the DP-reduced, pre-clip gradient of each modality's own copies
                                   (<group> = the modality) and of the shared parameters (<group> = shared)
  diag/update/<group>              ||W_after - W_before|| / ||W_before|| over the group's parameters: how far
                                   this optimizer step moved them, relative to their size

Cost: none when off (no probe is installed, the attention layer tests one attribute for None, the step runs
unchanged). When on, on logging steps only: q k^T recomputed per layer (looped over heads, [b, s, s] at a
time), a copy of the parameters to measure the update, and one gather per parameter for the gradient under
ZeRO. Meant for small models and controlled experiments, not for production runs.

Layouts: TP shards (heads, weight rows) and PP stages are summed (squares) or maxed (logits) over the
model-parallel group; a TP-replicated parameter is counted once. Gradient norms need the gradient between
backward and the optimizer step, which the pipeline engine does not expose: under PP they are absent
(None). A dense model's stream holds no per-token modality ids under PP, so there its logits are
reported per layer only (pair "all-all").
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from ..model.layer import MoTLayer
from ..tensor_parallel.param_meta import modality_of, tp_partition

SHARED = "shared"


class Diagnostics:
    def __init__(self, model: torch.nn.Module, topo, modalities, num_layers: int, interval: int, total_steps: int):
        self.topo, self.modalities, self.num_layers = topo, list(modalities), num_layers
        self.interval, self.total_steps = interval, total_steps
        self.layers = sorted(((m.layer_number, m.self_attention) for m in model.modules()
                              if isinstance(m, MoTLayer)), key=lambda t: t[0])
        self.groups = self.modalities + [SHARED]
        self.params = [(p, self.groups.index(modality_of(p) or SHARED), self._counted_here(p))
                       for _, p in model.named_parameters() if p.requires_grad]
        self.device = next(model.parameters()).device
        self.active = False
        self._mods_by_plan: Dict[int, torch.Tensor] = {}
        self._logits: Optional[torch.Tensor] = None
        self._grad_sq: Optional[torch.Tensor] = None
        self._before: List[torch.Tensor] = []

    def _counted_here(self, p) -> bool:
        """A TP-replicated parameter is summed on TP rank 0 only (the others hold the same tensor)."""
        return tp_partition(p)[0] >= 0 or self.topo.tp_rank == 0

    def due(self, step: int) -> bool:
        return step % self.interval == 0 or step == self.total_steps

    # -------------------------------------------------------------------------------------------- hooks
    def begin(self, step: int, batch) -> None:
        """Before optimizer step `step` runs on `batch`: arm the probes if it is a logging step."""
        if not self.due(step):
            return
        self.active = True
        m = len(self.modalities)
        self._logits = torch.full((self.num_layers, m * m + 2), -math.inf, device=self.device)
        self._mods_by_plan = {id(mb.plan): mb.modality_ids.reshape(-1).to(self.device)
                              for mb in batch.micro_batches if mb.plan is not None}
        self._grad_sq = None
        self._before = [self._full(p).detach().float().clone() for p, _, _ in self.params]
        for number, attn in self.layers:
            attn.arm_logit_probe(self._probe(number))

    def before_optimizer(self) -> None:
        """Between the last backward and the optimizer step (gradients reduced, not yet clipped)."""
        if not self.active:
            return
        from deepspeed.utils import safe_get_full_grad
        sq = torch.zeros(len(self.groups), device=self.device)
        for p, g, here in self.params:
            grad = safe_get_full_grad(p)  # collective under ZeRO: every rank calls it for every parameter
            if grad is not None and here:
                sq[g] += grad.detach().float().pow(2).sum()
        self._grad_sq = sq

    def end(self) -> Dict[str, Optional[float]]:
        """After the step: the diagnostics record (collective); {} on other steps."""
        if not self.active:
            return {}
        self.active = False
        for _, attn in self.layers:
            attn.arm_logit_probe(None)
        upd = torch.zeros(2, len(self.groups), device=self.device)  # [||dW||^2, ||W||^2] per group
        for (p, g, here), before in zip(self.params, self._before):
            after = self._full(p).detach().float()
            if here:
                upd[0, g] += (after - before).pow(2).sum()
                upd[1, g] += before.pow(2).sum()
        self._before, self._mods_by_plan = [], {}
        mp = self.topo.mp_group
        dist.all_reduce(upd, group=mp)
        dist.all_reduce(self._logits, op=dist.ReduceOp.MAX)  # heads (TP), stages (PP), data (DP)
        record = self._logit_record(self._logits.cpu())
        for name, d2, w2 in zip(self.groups, upd[0].tolist(), upd[1].tolist()):
            record[f"diag/update/{name}"] = math.sqrt(d2 / w2) if w2 > 0 else None
        grad = self._grad_sq
        if grad is not None:
            dist.all_reduce(grad, group=mp)
        for i, name in enumerate(self.groups):
            record[f"diag/grad_norm/{name}"] = math.sqrt(grad[i].item()) if grad is not None else None
        return record

    # ------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _full(p: torch.Tensor) -> torch.Tensor:
        """The whole parameter (this rank's TP shard): ZeRO-3 partitions it, so gather (collective)."""
        if hasattr(p, "ds_id"):
            from deepspeed.utils import safe_get_full_fp32_param
            return safe_get_full_fp32_param(p)
        return p

    def _logit_record(self, logits: torch.Tensor) -> Dict[str, Optional[float]]:
        """logits [L, M*M + 2]: the pairs, the layer's max, and a flag (pairs unknown somewhere)."""
        val = lambda x: float(x) if math.isfinite(float(x)) else None  # noqa: E731  (no such pair: None)
        m = len(self.modalities)
        record: Dict[str, Optional[float]] = {}
        for n in range(self.num_layers):
            record[f"diag/max_logit/layer{n}"] = val(logits[n, m * m])
        if logits[:, -1].max() > 0:
            return record
        pairs = logits[:, :m * m].view(-1, m, m)
        for a, qa in enumerate(self.modalities):
            for b, kb in enumerate(self.modalities):
                record[f"diag/max_logit/{qa}-{kb}"] = val(pairs[:, a, b].max())
                for n in range(self.num_layers):
                    record[f"diag/max_logit/layer{n}/{qa}-{kb}"] = val(pairs[n, a, b])
        return record

    def _probe(self, layer_number: int):
        m = len(self.modalities)

        def probe(q, k, mask, plan):
            mods = self._modalities(plan)
            row = torch.full((m * m + 2,), -math.inf, device=self.device)
            if mods is None:  # pairs unknown (dense plan on a pipeline stage): the layer's max only
                row[m * m], row[-1] = max_logits(q, k, mask, None, 1)[0, 0], 1.0
            else:
                pairs = max_logits(q, k, mask, mods, m)
                row[:m * m], row[m * m] = pairs.reshape(-1), pairs.max()
            self._logits[layer_number] = torch.maximum(self._logits[layer_number], row)
        return probe

    def _modalities(self, plan) -> Optional[torch.Tensor]:
        """Flat (s-major) sequence-order modality ids of a micro-batch's tokens."""
        mods = self._mods_by_plan.get(id(plan))
        if mods is not None:
            return mods
        if not plan.grouped:  # a dense plan that is not one of the loader's (a pipeline stage's copy)
            return None
        counts = torch.tensor(plan.counts, device=self.device)
        grouped = torch.repeat_interleave(torch.arange(len(plan.counts), device=self.device), counts)
        if plan.perm is None:
            return grouped
        flat = torch.empty_like(grouped)
        flat[plan.perm] = grouped  # grouped = flat[perm]
        return flat


@torch.no_grad()
def max_logits(q: torch.Tensor, k: torch.Tensor, mask, mods: Optional[torch.Tensor], m: int) -> torch.Tensor:
    """q [s, b, hq, d], k [s, b, hkv, d] (sequence order, as the attention kernel gets them); `mask` an
    AttentionMask (keys lo[i]..hi[i]) or None (causal); `mods` flat s-major modality ids or None (one group).
    -> [m, m] max allowed logit per (query modality, key modality), -inf where no pair exists."""
    s, b, hq, d = q.shape
    rep = hq // k.shape[2]
    qt, kt = q.permute(1, 2, 0, 3).float(), k.permute(1, 2, 0, 3).float()  # [b, heads, s, d]
    best = torch.full((b, s, s), -math.inf, device=q.device)
    for h in range(hq):  # one head at a time: [b, s, s] in memory, never [b, h, s, s]
        best = torch.maximum(best, qt[:, h] @ kt[:, h // rep].transpose(-1, -2) / math.sqrt(d))
    j = torch.arange(s, device=q.device)
    if mask is None:
        allowed = (j.view(1, 1, s) <= j.view(1, s, 1)).expand(b, s, s)
    else:
        allowed = (j >= mask.lo.unsqueeze(-1)) & (j <= mask.hi.unsqueeze(-1))
    best = best.masked_fill(~allowed, -math.inf)
    if mods is None:
        return best.amax().view(1, 1)
    ids = mods.view(s, b).t()  # [b, s]
    out = torch.empty(m, m, device=q.device)
    for a in range(m):
        qa = (ids == a).unsqueeze(-1)
        for c in range(m):
            out[a, c] = torch.where(qa & (ids == c).unsqueeze(1), best, -math.inf).amax()
    return out
