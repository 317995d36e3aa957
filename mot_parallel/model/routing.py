"""The routing plan: built once per micro-batch on the host, reused by every layer.

Token order convention. A micro-batch of token ids `[s, b]` is flattened s-major (token t = i*b + j).
`perm` is the stable argsort of the modality ids, so `grouped = flat[perm]` lists all modality-0 tokens,
then modality 1, ... each run in sequence order. When routing is active the residual stream lives in
this grouped order for the whole model: per-modality weights act on contiguous slices (`counts`), and
only the attention core (causal, RoPE, document masks) needs sequence order.

Sequence parallelism shards the *flat* token list (grouped order when routed, sequence order when
dense) in contiguous pieces of `sp_sizes` tokens, so SP all-gather / reduce-scatter need no routing:
route-after-gather and un-route-before-scatter hold trivially because nothing is un-routed there.

Everything a layer needs from the plan is either a host int (counts, sizes: no device->host sync
inside a layer) or a device index tensor moved once per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch.profiler import record_function

from ..distributed.collectives import even_sizes
from .attention_mask import build_attention_mask

ROUTING_SCOPE = "mot/routing"


class _Permute(torch.autograd.Function):
    """Gather rows by `index`; backward gathers by the inverse permutation (no scatter-add)."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.inverse = inverse
        with record_function(ROUTING_SCOPE):
            return x.index_select(0, index)

    @staticmethod
    def backward(ctx, g):
        with record_function(ROUTING_SCOPE):
            return g.index_select(0, ctx.inverse), None, None


@dataclass(frozen=True)
class RoutingPlan:
    seq_len: int
    batch: int
    counts: Tuple[int, ...]                       # tokens per modality in this micro-batch (host)
    grouped: bool = True                          # residual stream in grouped order (False: dense model)
    perm: Optional[torch.Tensor] = None           # [N] grouped -> flat index; None = identity
    inv_perm: Optional[torch.Tensor] = None       # [N] flat -> grouped index
    sp_sizes: Optional[Tuple[int, ...]] = None    # tokens per TP rank under sequence parallelism
    local_counts: Optional[Tuple[int, ...]] = None  # per-modality counts of this rank's SP shard
    position_ids: Optional[torch.Tensor] = None   # [s, b] RoPE positions (reset per document)
    segment_ids: Optional[torch.Tensor] = None    # [s, b] document ids for document masking
    attention_mask: Optional[torch.Tensor] = None  # [b, 1, s, s] bool, causal & same document; one per
    #                                               micro-batch, shared by every layer (saved once)

    @property
    def num_tokens(self) -> int:
        return self.seq_len * self.batch

    @property
    def is_identity(self) -> bool:
        return self.perm is None

    def norm_counts(self, sequence_parallel: bool) -> Tuple[int, ...]:
        """Counts of the tokens a rank holds in the residual stream (its SP shard, or all)."""
        if not self.grouped:
            raise RuntimeError("a per-modality module got a dense (ungrouped) routing plan; build the plan "
                               "with routed=True for a model with untied parts")
        return self.local_counts if sequence_parallel and self.local_counts is not None else self.counts

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] grouped order -> [N, ...] flat sequence order."""
        return x if self.perm is None else _Permute.apply(x, self.inv_perm, self.perm)

    def to_grouped(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] flat sequence order -> [N, ...] grouped order."""
        return x if self.perm is None else _Permute.apply(x, self.perm, self.inv_perm)

    def group_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Route an integer tensor [s, b] (tokens, labels) to grouped order [N] (no autograd)."""
        flat = ids.reshape(-1)
        return flat if self.perm is None else flat.index_select(0, self.perm)


def _check_modality_ids(modality_ids: torch.Tensor, num_modalities: int) -> None:
    if modality_ids.device.type != "cpu":
        raise ValueError("build_routing_plan wants the modality ids on the host (CPU), as the loader has them; "
                         "reading them back from the device would synchronise every step")
    if modality_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"modality ids must be integers, got {modality_ids.dtype}")
    bad = (modality_ids < 0) | (modality_ids >= num_modalities)
    if bad.any():
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"modality id {int(modality_ids[pos])} at position {pos} is out of range: "
                         f"model.modalities has {num_modalities} entries (ids 0..{num_modalities - 1})")


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 at every document start; `segment_ids` [s, b] on the host."""
    s, b = segment_ids.shape
    idx = torch.arange(s).unsqueeze(1).expand(s, b)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[1:] = segment_ids[1:] != segment_ids[:-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=0).values
    return idx - first


def sp_shard(num_tokens: int, counts: Sequence[int], tp_size: int, tp_rank: int
             ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Sequence-parallel split of the flat (grouped) token list: (tokens per TP rank, per-modality
    counts of this rank's contiguous shard), all host ints."""
    sizes = tuple(even_sizes(num_tokens, tp_size))
    lo = sum(sizes[:tp_rank])
    hi, start, local = lo + sizes[tp_rank], 0, []
    for c in counts:
        local.append(max(0, min(start + c, hi) - max(start, lo)))
        start += c
    return sizes, tuple(local)


def build_routing_plan(modality_ids: torch.Tensor, num_modalities: int, *, routed: bool = True,
                       tp_size: int = 1, tp_rank: int = 0, sequence_parallel: bool = False,
                       segment_ids: Optional[torch.Tensor] = None, device: torch.device = torch.device("cpu"),
                       ) -> RoutingPlan:
    """Group tokens by modality (stable) from host-side ids `[s, b]`; move indices to `device` once.

    routed=False (dense model) or an already-grouped batch gives the identity plan: no permutation.
    """
    _check_modality_ids(modality_ids, num_modalities)
    s, b = modality_ids.shape
    flat = modality_ids.reshape(-1).long()
    counts = tuple(int(c) for c in torch.bincount(flat, minlength=num_modalities))
    perm = inv = None
    if routed and num_modalities > 1:
        order = torch.argsort(flat, stable=True)
        if not torch.equal(order, torch.arange(flat.numel())):
            inv = torch.empty_like(order)
            inv[order] = torch.arange(order.numel())
            perm, inv = order.to(device, non_blocking=True), inv.to(device, non_blocking=True)
    sp_sizes = local = None
    if sequence_parallel and tp_size > 1:
        sp_sizes, local = sp_shard(s * b, counts, tp_size, tp_rank)
        local = local if routed else None
    positions = segments = mask = None
    if segment_ids is not None:
        positions = positions_from_segments(segment_ids).to(device, non_blocking=True)
        segments = segment_ids.to(device, non_blocking=True)
        mask = build_attention_mask(segment_ids, device=device)  # host ids; its kernel's form, on device
    return RoutingPlan(s, b, counts, routed, perm, inv, sp_sizes, local, positions, segments, mask)


def document_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool: token i attends to token j iff j <= i and both are in the same document."""
    s = segment_ids.shape[0]
    seg = segment_ids.t()
    causal = torch.ones(s, s, dtype=torch.bool, device=seg.device).tril()
    return ((seg.unsqueeze(2) == seg.unsqueeze(1)) & causal).unsqueeze(1)
