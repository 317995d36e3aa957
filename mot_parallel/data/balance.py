"""How even a global batch is, and how even it could have been.

`batch_stats` measures a batch; `balance_bound` says what no packer could beat with the same pieces, so
a report can show how far a packer is from the best possible split rather than from a perfect 1.0.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from .corpus import SegmentTable


def max_load_lower_bound(lumps: Sequence[int], loose: int, n_cells: int) -> int:
    """A lower bound on the largest cell load of one modality when `lumps` (its tokens in each atomic
    piece, which lands whole in one cell) and `loose` tokens (in splittable pieces, cut anywhere) are
    spread over `n_cells` cells.

    Every cell's load is a sum of some lumps plus 0..loose loose tokens; the fullest cell holds at least
    the mean, rounded up to whole tokens, and at least the largest lump. So the bound is the smallest
    value >= ceil(mean) of the form (subset sum of lumps) + (0..loose), and at least max(lumps). Cell
    and sequence capacities are ignored (they can only raise the true optimum), so it is a *lower*
    bound: a packer reaching it is optimal for that step's pieces.
    """
    lumps = [int(v) for v in lumps if v > 0]
    total = sum(lumps) + int(loose)
    if total == 0:
        return 0
    target = -(-total // n_cells)
    biggest = max(lumps, default=0)
    reach = 1  # bit s set: some subset of lumps sums to s (bits above target + biggest are not needed)
    width = target + biggest + 1
    mask = (1 << width) - 1
    for v in lumps:
        reach = (reach | (reach << v)) & mask
    window = reach >> max(target - int(loose), 0)  # a subset sum in [target - loose, target] reaches target
    if window & ((1 << (min(target, int(loose)) + 1)) - 1):
        best = target
    else:
        above = reach >> target
        best = target + ((above & -above).bit_length() - 1)
    return max(best, biggest)


def balance_bound(batch, corpus: SegmentTable) -> Dict[str, float]:
    """Per modality: the lower bound on max over cells / mean over cells for this batch's pieces
    (see max_load_lower_bound); 1.0 where the modality is absent."""
    vec = batch.piece_vectors(corpus)
    atomic = np.asarray(corpus.atomic, dtype=bool)
    whole = vec[:, atomic].sum(axis=1) > 0  # pieces holding an atomic segment land whole in one cell
    out = {}
    for m, name in enumerate(corpus.modalities):
        lumps = vec[whole, m]
        lumps, loose = lumps[lumps > 0].tolist(), int(vec[~whole, m].sum())
        total = sum(lumps) + loose
        out[name] = max_load_lower_bound(lumps, loose, batch.n_cells) * batch.n_cells / total if total else 1.0
    return out


def batch_stats(batch, corpus: SegmentTable, gemm_overhead_tokens: float = 128.0,
                attention_weight: float = 0.0) -> Dict[str, object]:
    """Balance metrics of a global batch.

    max_over_mean[m]: max over cells of modality-m tokens / mean over cells;
    bound[m]: the lower bound on max_over_mean[m] for this batch's pieces (balance_bound);
    padding_fraction: padded positions / all positions;
    step_time_ratio: slowest cell / mean cell under a cost model: per modality, a grouped-GEMM slice costs
    its tokens plus `gemm_overhead_tokens` when non-empty (tile/launch overhead of a small GEMM), plus
    `attention_weight` x sum of squared piece lengths (document-masked attention).
    """
    vec = batch.cell_vectors(corpus).astype(np.float64)
    mean = vec.mean(axis=0)
    ratio = {name: (float(vec[:, m].max() / mean[m]) if mean[m] > 0 else 1.0)
             for m, name in enumerate(corpus.modalities)}
    attn = np.bincount(batch.cell_ids, weights=batch.pieces.length.astype(np.float64) ** 2, minlength=batch.n_cells)
    cost = (vec + gemm_overhead_tokens * (vec > 0)).sum(axis=1) + attention_weight * attn
    total = batch.n_cells * batch.seqs_per_cell * batch.seq_len
    return {"max_over_mean": ratio, "bound": balance_bound(batch, corpus),
            "padding_fraction": batch.padding() / total, "step_time_ratio": float(cost.max() / cost.mean())}
