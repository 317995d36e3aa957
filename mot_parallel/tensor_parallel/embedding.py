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

from ..distributed.parallel_context import SINGLE_PROCESS, ParallelContext
from . import mappings as M
from .megatron_kwargs import take_megatron_kwargs
from .param_meta import mark_no_weight_decay, mark_tp_sharded
from .weight_init import SeededInit, init_sharded_, normal_init


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, *, parallel: ParallelContext = SINGLE_PROCESS,
                 config=None, init: Optional[SeededInit] = None, device=None, **megatron_kwargs):
        super().__init__()
        megatron_init, dtype = take_megatron_kwargs("VocabParallelEmbedding", megatron_kwargs,
                                                    {"init_method": None, "params_dtype": None})
        init = init or SeededInit(megatron_init or normal_init(0.02))
        self.parallel, self.tp_group, tp, rank = parallel, parallel.tp_group, parallel.tp_size, parallel.tp_rank
        if num_embeddings % tp:
            raise ValueError(f"vocabulary {num_embeddings} is not divisible by tensor-parallel size {tp}; "
                             "pad it (model.make_vocab_size_divisible_by)")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.per_rank = num_embeddings // tp
        self.vocab_start = rank * self.per_rank
        self.sequence_parallel = parallel.sequence_parallel
        dtype = dtype or getattr(config, "params_dtype", torch.float32)
        self.weight = nn.Parameter(torch.empty(self.per_rank, embedding_dim, device=device, dtype=dtype))
        mark_tp_sharded(self.weight, 0, tp)
        mark_no_weight_decay(self.weight)  # a lookup table, not a linear map: Megatron/GPT do not decay it
        if getattr(config, "perform_initialization", True):
            init_sharded_(self.weight, init.method, (num_embeddings, embedding_dim), 0, rank, tp, init.seed)

    def forward(self, ids: torch.Tensor, sp_sizes: Optional[Sequence[int]] = None) -> torch.Tensor:
        """ids [...] -> [..., h]; under SP the result is this rank's dim-0 piece (`sp_sizes` if uneven)."""
        if self.parallel.tp_size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return M.reduce_scatter_to_sp_region(out, self.tp_group, sp_sizes)
        return M.reduce_from_tp_region(out, self.tp_group)
