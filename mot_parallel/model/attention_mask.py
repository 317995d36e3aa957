"""The attention mask of a micro-batch, built once from host metadata, in the form its kernel wants.

What a query may see. Documents are packed into a sequence (`document_ids` [s, b], one contiguous run per
document); inside a document attention is causal, except within a *bidirectional span* (`span_ids`
[s, b], -1 = none; Transfusion's image: every patch of one image sees every other patch of it). Because
documents and spans are contiguous runs, query i may attend exactly the keys of one interval:

    lo[i] = first token of i's document,   hi[i] = last token of i's span if i is in one, else i

so the whole mask is two int32 vectors [b, s] (`lo`, `hi`), computed on the host in O(s).

Two forms, one choice (`choose_kernel`, the only place that picks an attention kernel):
  - `flex`: a FlexAttention BlockMask (CUDA with torch.nn.attention.flex_attention). Its block indices
    (which 128x128 tiles are empty, full, or partial) come from `lo`/`hi` on the host, are moved to the
    device once per micro-batch (non-blocking), and the kernel skips empty tiles and evaluates the mask
    only on partial ones: no [s, s] tensor anywhere, ~half the work of a causal mask for packed documents.
  - `sdpa`: the dense [b, 1, s, s] bool mask for torch SDPA (CPU, or no FlexAttention); built on the
    device from `lo`/`hi` (device ops only).
  - plain causal attention (no documents, no spans) needs no mask at all: SDPA with is_causal (flash).
Nothing here reads device memory back to the host, so no layer synchronises.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..distributed import device as dev

FLEX_BLOCK = 128  # FlexAttention's default tile; its kernels take block masks in multiples of it

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask
    _HAS_FLEX = True
except ImportError:  # pragma: no cover - old torch: SDPA with the dense mask everywhere
    BlockMask, _HAS_FLEX = None, False


def flex_available() -> bool:
    return _HAS_FLEX


def choose_kernel(device: torch.device, masked: bool = True) -> str:
    """'sdpa_causal' (no mask), 'flex' (accelerator with FlexAttention) or 'sdpa' (dense bool mask)."""
    return kernel_for(dev.is_accelerator(device), masked)


def kernel_for(on_accelerator: bool, masked: bool = True) -> str:
    """choose_kernel without a device (the planner plans for accelerators it does not have)."""
    if not masked:
        return "sdpa_causal"
    return "flex" if on_accelerator and flex_available() else "sdpa"


@dataclass
class AttentionMask:
    """One micro-batch's mask, shared by every layer. `lo`/`hi` [b, s] int32 on the compute device."""
    lo: torch.Tensor
    hi: torch.Tensor
    kernel: str                               # 'flex' or 'sdpa' (choose_kernel)
    block_mask: Optional[object] = None       # FlexAttention BlockMask when kernel == 'flex'
    _dense: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def batch(self) -> int:
        return self.lo.shape[0]

    @property
    def seq_len(self) -> int:
        return self.lo.shape[1]

    def dense(self) -> torch.Tensor:
        """[b, 1, s, s] bool: query i attends key j iff lo[i] <= j <= hi[i] (built on first use)."""
        if self._dense is None:
            j = torch.arange(self.seq_len, device=self.lo.device)
            self._dense = ((j >= self.lo.unsqueeze(-1)) & (j <= self.hi.unsqueeze(-1))).unsqueeze(1)
        return self._dense


def build_attention_mask(document_ids: torch.Tensor, span_ids: Optional[torch.Tensor] = None, *,
                         device: torch.device = torch.device("cpu"), kernel: Optional[str] = None,
                         block_size: int = FLEX_BLOCK, context_start: Optional[torch.Tensor] = None) -> AttentionMask:
    """From `document_ids` [s, b] (and optional `span_ids` [s, b], -1 = no span) to the kernel's mask.
    `context_start` [s, b] (-1 = none): the first key a query may see, when later than its document's start
    (a condition-dropped image sees only from its BOI marker on: classifier-free guidance).

    Ids on the host are validated (documents and spans must be contiguous runs; the error names the
    column and id); ids already on a device (a later pipeline stage) are trusted and processed there.
    `kernel`: None = choose_kernel(device); 'flex' or 'sdpa' to force one (tests, benchmarks)."""
    doc, span = _check_ids(document_ids, span_ids)
    kernel = kernel or choose_kernel(device)
    if kernel not in ("flex", "sdpa"):
        raise ValueError(f"attention kernel {kernel!r}: expected 'flex' or 'sdpa'")
    if kernel == "flex" and not flex_available():
        raise RuntimeError("kernel 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
    lo, hi = intervals(doc, span)
    if context_start is not None:
        ctx = context_start.t().long().to(lo.device)
        lo = torch.where(ctx >= 0, torch.maximum(lo, ctx), lo)
    to = dict(device=device, non_blocking=True)  # no host wait, hence no device sync either
    mask = AttentionMask(lo.to(torch.int32).to(**to), hi.to(torch.int32).to(**to), kernel)
    if kernel == "flex":
        partial, full = block_classes(lo, hi, block_size)
        mask.block_mask = _block_mask(partial, full, mask.lo, mask.hi, block_size, device)
    return mask


def _check_ids(document_ids: torch.Tensor, span_ids: Optional[torch.Tensor]):
    """-> (doc [b, s], span [b, s] or None), validated when on the host."""
    if document_ids.dim() != 2 or document_ids.is_floating_point() or document_ids.dtype == torch.bool:
        raise ValueError(f"document ids must be an integer [s, b] tensor, got {tuple(document_ids.shape)} "
                         f"{document_ids.dtype}")
    doc = document_ids.t().long()
    span = None
    if span_ids is not None:
        if span_ids.shape != document_ids.shape or span_ids.is_floating_point():
            raise ValueError(f"span ids must be an integer tensor shaped like the document ids "
                             f"{tuple(document_ids.shape)}, got {tuple(span_ids.shape)} {span_ids.dtype}")
        span = span_ids.t().long().to(doc.device)
    if doc.device.type == "cpu":
        _check_runs(doc, None, "document")
        if span is not None:
            if (span < -1).any():
                raise ValueError("span ids must be >= 0, or -1 for tokens outside any bidirectional span")
            _check_runs(doc, span, "span")
    return doc, span


def _check_runs(doc: torch.Tensor, span: Optional[torch.Tensor], what: str) -> None:
    """Each document (or each (document, span) pair with span >= 0) must be one contiguous run."""
    for col in range(doc.shape[0]):
        keys = doc[col] if span is None else doc[col] * (int(span.max()) + 2) + span[col] + 1
        starts = torch.ones_like(keys, dtype=torch.bool)
        starts[1:] = keys[1:] != keys[:-1]
        if span is not None:
            starts &= span[col] >= 0
        run_keys = keys[starts].tolist()
        if len(run_keys) != len(set(run_keys)):
            seen = set()
            dup = next(k for k in run_keys if k in seen or seen.add(k))
            pos = [int(i) for i in (starts & (keys == dup)).nonzero().flatten()[:2]]
            label = f"document id {int(doc[col][pos[0]])}" if span is None else \
                f"span id {int(span[col][pos[0]])} of document {int(doc[col][pos[0]])}"
            raise ValueError(f"batch column {col}: {label} appears in separate runs (starting at positions "
                             f"{pos[0]} and {pos[1]}); each {what} must be one contiguous run of tokens")


def intervals(doc: torch.Tensor, span: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """doc, span [b, s] -> lo, hi [b, s] (int64): query i attends keys lo[i]..hi[i] (inclusive)."""
    b, s = doc.shape
    idx = torch.arange(s, device=doc.device).expand(b, s)
    starts = torch.ones_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    lo = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    if span is None:
        return lo, idx.clone()
    ends = torch.ones_like(starts)  # last token of a (document, span) run
    ends[:, :-1] = (doc[:, 1:] != doc[:, :-1]) | (span[:, 1:] != span[:, :-1])
    run_end = torch.where(ends, idx, torch.full_like(idx, s - 1)).flip(1).cummin(dim=1).values.flip(1)
    return lo, torch.where(span >= 0, run_end, idx)


def block_classes(lo: torch.Tensor, hi: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[b, n, n] bool (n = ceil(s / block)): tiles holding some allowed (query, key) pair but not only
    allowed ones (`partial`: the kernel evaluates the mask there), and tiles holding only allowed pairs
    (`full`: no mask evaluation). Tiles cut by the sequence end are never `full`. Cost O(b s n)."""
    b, s = lo.shape
    n = -(-s // block)
    pad = n * block - s
    lo_p = F.pad(lo, (0, pad), value=s)    # padding rows: the empty interval [s, -1]
    hi_p = F.pad(hi, (0, pad), value=-1)
    k0 = torch.arange(n, device=lo.device) * block      # first key of each kv tile
    k1 = (k0 + block).clamp(max=s) - 1                    # its last key
    overlap = (lo_p.unsqueeze(-1) <= k1) & (hi_p.unsqueeze(-1) >= k0)   # [b, n*block, n]
    nonempty = overlap.view(b, n, block, n).any(dim=2)
    lo_max = lo_p.view(b, n, block).max(dim=2).values.unsqueeze(-1)
    hi_min = hi_p.view(b, n, block).min(dim=2).values.unsqueeze(-1)
    full = (lo_max <= k0) & (hi_min >= k0 + block - 1) & (k0 + block <= s)
    return nonempty & ~full, full


def _ordered(dense: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """[b, n, n] bool -> (count [b, 1, n], column indices [b, 1, n, n], listed ones first) int32."""
    d = dense.to(torch.int32).unsqueeze(1)
    return d.sum(-1, dtype=torch.int32), torch.argsort(d, dim=-1, descending=True, stable=True).to(torch.int32)


def _interval_mask_mod(lo: torch.Tensor, hi: torch.Tensor):
    """FlexAttention mask_mod over the device `lo`/`hi` (one code object: compiled once, reused)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= lo[b, q_idx]) & (kv_idx <= hi[b, q_idx])
    return mask_mod


_FROM_KV_TAKES_LENGTHS = _HAS_FLEX and "seq_lengths" in inspect.signature(BlockMask.from_kv_blocks).parameters


def _block_mask(partial, full, lo_dev, hi_dev, block: int, device: torch.device):
    """The BlockMask from host tile classes; the q-major transposes are computed on the device (sync-free)."""
    (kv_num, kv_idx), (full_num, full_idx) = _ordered(partial), _ordered(full)
    moved = [t.to(device, non_blocking=True) for t in (kv_num, kv_idx, full_num, full_idx)]
    s = lo_dev.shape[1]
    kw = {"seq_lengths": (s, s)} if _FROM_KV_TAKES_LENGTHS else {}
    return BlockMask.from_kv_blocks(*moved, BLOCK_SIZE=block, mask_mod=_interval_mask_mod(lo_dev, hi_dev), **kw)


def mask_bytes(batch: int, seq: int, kernel: str, block: int = FLEX_BLOCK) -> int:
    """Device bytes of one micro-batch's mask (the planner's attention-mask term)."""
    if kernel == "sdpa_causal":
        return 0
    intervals_bytes = 2 * batch * seq * 4
    if kernel == "sdpa":
        return intervals_bytes + batch * seq * seq  # the dense bool mask
    n = -(-seq // block)
    return intervals_bytes + 4 * batch * n * (n + 1) * 4  # kv- and q-major, partial and full: counts + indices
