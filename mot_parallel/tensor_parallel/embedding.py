"""Vocab-parallel embedding: rows [vocab/tp, h] per rank; each rank embeds its id range, then the
partial embeddings are summed (all-reduce) or, under sequence parallelism, reduce-scattered along dim 0.

Token ids are *not* range-checked here: that would need a device->host sync per call. The data path
checks them on the host before training, once per corpus (`mot_parallel/data/token_ids.py`:
`check_corpus_token_ids`, cached next to the corpus; `check_token_ids` for batches built elsewhere).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.collectives import group_rank, group_size
from . import mappings as M
from .param_meta import mark_no_weight_decay, mark_tp_sharded
from .weight_init import InitMethod, init_sharded_, normal_init


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, *, init_method: Optional[InitMethod] = None,
                 config=None, tp_group=None, sequence_parallel: Optional[bool] = None,
                 init_seed: Optional[int] = None, device=None, params_dtype: Optional[torch.dtype] = None,
                 **unused_megatron_kwargs):
        super().__init__()
        self.tp_group, tp, rank = tp_group, group_size(tp_group), group_rank(tp_group)
        if num_embeddings % tp:
            raise ValueError(f"vocabulary {num_embeddings} is not divisible by tensor-parallel size {tp}; "
                             "pad it (model.make_vocab_size_divisible_by)")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.per_rank = num_embeddings // tp
        self.vocab_start = rank * self.per_rank
        sp = getattr(config, "sequence_parallel", False) if sequence_parallel is None else sequence_parallel
        self.sequence_parallel = bool(sp) and tp > 1
        dtype = params_dtype or getattr(config, "params_dtype", torch.float32)
        self.weight = nn.Parameter(torch.empty(self.per_rank, embedding_dim, device=device, dtype=dtype))
        mark_tp_sharded(self.weight, 0, tp)
        mark_no_weight_decay(self.weight)  # a lookup table, not a linear map: Megatron/GPT do not decay it
        if getattr(config, "perform_initialization", True):
            init_sharded_(self.weight, init_method or normal_init(0.02), (num_embeddings, embedding_dim), 0,
                          rank, tp, init_seed)

    def forward(self, ids: torch.Tensor, sp_sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
        """ids [...] -> [..., h]; under SP the result is this rank's dim-0 piece (`sp_sizes` if uneven)."""
        if group_size(self.tp_group) == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return M.reduce_scatter_to_sp_region(out, self.tp_group, sp_sizes)
        return M.reduce_from_tp_region(out, self.tp_group)
