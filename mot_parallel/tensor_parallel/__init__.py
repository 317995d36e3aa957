"""Tensor/sequence-parallel primitives: region mappings, Megatron-contract linears, vocab-parallel
embedding and cross-entropy, TP-size-independent init, and the RNG tracker."""
from .cross_entropy import vocab_parallel_cross_entropy
from .embedding import VocabParallelEmbedding, check_token_ids
from .init import init_sharded_, normal_init, param_seed, scaled_normal_init, set_tp_attributes, shard
from .layers import ColumnParallelLinear, RowParallelLinear
from .mappings import (copy_to_tp_region, gather_from_sp_region, gather_from_tp_region, reduce_from_tp_region,
                       reduce_scatter_to_sp_region, scatter_to_sp_region, scatter_to_tp_region)
from .grad_sync import allreduce_tp_partial_grads, register_tp_grad_hooks, tp_partial_grad_params
from .random import RNGStatesTracker, make_tracker, model_parallel_seeds
