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
inside a layer) or a device index tensor moved once per step. Between pipeline stages the plan travels
as fixed-shape tensors (`to_tensors` / `from_tensors`); both construction paths end in `assemble`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch.profiler import record_function

from ..distributed.collectives import even_sizes
from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from .attention_mask import AttentionMask, build_attention_mask

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
    local_counts: Optional[Tuple[int, ...]] = None  # per-modality counts of this rank's SP shard (grouped only)
    position_ids: Optional[torch.Tensor] = None   # [s, b] RoPE positions (reset per document)
    segment_ids: Optional[torch.Tensor] = None    # [s, b] document ids for document masking
    attention_mask: Optional[AttentionMask] = None  # causal within documents (attention_mask.py), in its
    #                                                 kernel's form; one per micro-batch, shared by all layers
    sp_offset: int = 0                            # first grouped index of this rank's SP shard (0 without SP)
    span_ids: Optional[torch.Tensor] = None       # [s, b] bidirectional spans (an image), -1 elsewhere
    context_start: Optional[torch.Tensor] = None  # [s, b] first visible key of a query, -1 = its document's

    @classmethod
    def assemble(cls, seq_len: int, batch: int, counts: Sequence[int], *, grouped: bool,
                 order: Optional[Tuple[torch.Tensor, torch.Tensor]], parallel: ParallelContext,
                 documents: "PlanDocuments") -> "RoutingPlan":
        """The one constructor behind build_routing_plan and from_tensors: everything derived from the
        counts (SP shard sizes, the shard's per-modality counts) and from the document ids (the mask, unless
        given: build_routing_plan builds it from the host ids, a pipeline stage from the device ids).
        `order`: (perm, inv_perm), or None for the identity."""
        counts = tuple(int(c) for c in counts)
        sp_sizes = local = None
        offset = 0
        if parallel.sequence_parallel:
            sp_sizes, local = sp_shard(seq_len * batch, counts, parallel.tp_size, parallel.tp_rank)
            offset = sum(sp_sizes[:parallel.tp_rank])
            # a dense (ungrouped) stream is in sequence order: a shard's modality counts describe no slices
            local = local if grouped else None
        d = documents
        mask = d.attention_mask
        if mask is None and d.segment_ids is not None:
            mask = build_attention_mask(d.segment_ids, d.span_ids, device=d.segment_ids.device,
                                        context_start=d.context_start)
        perm, inv = order if order is not None else (None, None)
        return cls(seq_len, batch, counts, grouped, perm, inv, sp_sizes, local, d.position_ids, d.segment_ids, mask,
                   offset, d.span_ids, d.context_start)

    @property
    def num_tokens(self) -> int:
        return self.seq_len * self.batch

    @property
    def sequence_parallel(self) -> bool:
        return self.sp_sizes is not None

    @property
    def stream_counts(self) -> Tuple[int, ...]:
        """Per-modality counts of the tokens this rank holds in the residual stream: its SP shard under
        sequence parallelism, else all of them. What norms and row-parallel outputs are sliced by."""
        self._require_grouped()
        return self.local_counts if self.sequence_parallel else self.counts

    @property
    def gathered_counts(self) -> Tuple[int, ...]:
        """Per-modality counts of all the micro-batch's tokens (after the SP all-gather): what column-parallel
        linears and QK-norms are sliced by."""
        self._require_grouped()
        return self.counts

    def modality_rows(self, m: int) -> Tuple[slice, slice]:
        """Modality m's tokens that this rank holds in its residual stream: (their rows in the stream tensor,
        the same tokens' rows among the modality's own tokens in grouped order); its SP shard's part under
        sequence parallelism, else all of them. Host ints only."""
        self._require_grouped()
        start = sum(self.counts[:m])
        end = start + self.counts[m]
        lo = self.sp_offset
        hi = lo + (sum(self.local_counts) if self.sequence_parallel else self.num_tokens)
        a = max(start, lo)
        b = max(a, min(end, hi))
        return slice(a - lo, b - lo), slice(a - start, b - start)

    def _require_grouped(self) -> None:
        if not self.grouped:
            raise RuntimeError("a per-modality module got a dense (ungrouped) routing plan; build the plan "
                               "with routed=True for a model with untied parts")

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

    # transport between pipeline stages -------------------------------------------------------------------
    def to_tensors(self, device: torch.device) -> Tuple[torch.Tensor, ...]:
        """The plan as fixed-shape integer tensors on `device` (DeepSpeed's pipeline sends one tuple of
        tensors between stages, same shapes every micro-batch, no None):
            (perm [N], inv_perm [N], counts [M], flags [6], positions [s, b], segments [s, b], spans [s, b],
             context starts [s, b])
        flags = (identity permutation, document masking, grouped stream, sequence parallel, spans, context)."""
        s, b, n = self.seq_len, self.batch, self.num_tokens
        ident = self.perm is None
        perm = torch.arange(n, device=device) if ident else self.perm
        inv = perm if ident else self.inv_perm
        pos = self.position_ids if self.position_ids is not None else \
            torch.arange(s, device=device).unsqueeze(1).expand(s, b).contiguous()
        seg = self.segment_ids if self.segment_ids is not None else torch.zeros(s, b, dtype=torch.long, device=device)
        flags = torch.tensor([int(ident), int(self.segment_ids is not None), int(self.grouped),
                              int(self.sequence_parallel), int(self.span_ids is not None),
                              int(self.context_start is not None)], device=device)
        none = torch.full((s, b), -1, dtype=torch.long, device=device)
        spans = self.span_ids if self.span_ids is not None else none
        context = self.context_start if self.context_start is not None else none
        return perm, inv, torch.tensor(self.counts, device=device), flags, pos, seg, spans, context

    @classmethod
    def from_tensors(cls, tensors: Sequence[torch.Tensor], parallel: ParallelContext) -> "RoutingPlan":
        """Inverse of to_tensors on any stage; reads counts and flags to the host (one small copy)."""
        perm, inv, counts, flags, pos, seg, spans, context = tensors
        ident, documents, grouped, sp, has_spans, has_context = (bool(f) for f in flags.tolist())
        if sp != parallel.sequence_parallel:
            raise RuntimeError(f"a routing plan built {'with' if sp else 'without'} sequence parallelism reached a "
                               f"stage running {parallel.describe()}: every stage must share one ParallelContext")
        s, b = pos.shape
        docs = PlanDocuments(pos, seg if documents else None, spans if has_spans else None,
                             context if has_context else None)
        return cls.assemble(s, b, counts.tolist(), grouped=grouped, order=None if ident else (perm, inv),
                            parallel=parallel, documents=docs)


class PlanDocuments(NamedTuple):
    """The per-token document facts a plan carries ([s, b] each, or None): RoPE positions, document ids
    (document masking), bidirectional span ids (images), context starts; and the mask, when already built."""
    position_ids: Optional[torch.Tensor] = None
    segment_ids: Optional[torch.Tensor] = None
    span_ids: Optional[torch.Tensor] = None
    context_start: Optional[torch.Tensor] = None
    attention_mask: Optional[AttentionMask] = None


PLAN_TENSORS = 8  # len(RoutingPlan.to_tensors(...))


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
                       parallel: ParallelContext = SINGLE_PROCESS, segment_ids: Optional[torch.Tensor] = None,
                       device: torch.device = torch.device("cpu"), span_ids: Optional[torch.Tensor] = None,
                       context_start: Optional[torch.Tensor] = None) -> RoutingPlan:
    """Group tokens by modality (stable) from host-side ids `[s, b]`; move indices to `device` once.
    `span_ids` / `context_start` [s, b] (host): bidirectional spans (images) and later context starts
    (condition-dropped images), for the attention mask (attention_mask.py).

    routed=False (dense model) or an already-grouped batch gives the identity plan: no permutation.
    """
    _check_modality_ids(modality_ids, num_modalities)
    s, b = modality_ids.shape
    flat = modality_ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=num_modalities).tolist()
    order = None
    if routed and num_modalities > 1:
        perm = torch.argsort(flat, stable=True)
        if not torch.equal(perm, torch.arange(flat.numel())):
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(perm.numel())
            order = (perm.to(device, non_blocking=True), inv.to(device, non_blocking=True))
    move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
    docs = PlanDocuments(span_ids=move(span_ids), context_start=move(context_start))
    if segment_ids is not None:
        mask = build_attention_mask(segment_ids, span_ids, device=device, context_start=context_start)  # host ids
        docs = docs._replace(position_ids=move(positions_from_segments(segment_ids)), segment_ids=move(segment_ids),
                             attention_mask=mask)
    return RoutingPlan.assemble(s, b, counts, grouped=routed, order=order, parallel=parallel, documents=docs)
