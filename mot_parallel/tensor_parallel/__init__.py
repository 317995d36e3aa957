"""Tensor/sequence-parallel primitives: region mappings, the Megatron-contract column-parallel linear,
vocab-parallel embedding and cross-entropy, TP-size-independent initialisation, sharding of full tensors,
typed parameter metadata and the TP sum of partial gradients."""
from .cross_entropy import vocab_parallel_cross_entropy
from .embedding import VocabParallelEmbedding
from .grad_sync import allreduce_tp_partial_grads, register_tp_grad_hooks, tp_partial_grad_params
from .layers import ColumnParallelLinear
from .mappings import (copy_to_tp_region, gather_from_sp_region, gather_from_tp_region, reduce_from_tp_region,
                       reduce_scatter_to_sp_region, scatter_to_sp_region, scatter_to_tp_region)
from .weight_init import SeededInit, draw_full, init_sharded_, normal_init, param_seed, scaled_normal_init
