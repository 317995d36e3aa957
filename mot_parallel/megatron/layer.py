"""The MoT layer as a Megatron-Core transformer layer: a ModuleSpec that `TransformerBlock` replicates.

    from mot_parallel.megatron import MoTOptions, get_mot_layer_spec
    config = TransformerConfig(..., normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
                               add_bias_linear=False, qk_layernorm=True)     # qk_layernorm: MoT QK-norm
    spec = get_mot_layer_spec(MoTOptions(modalities=("text", "image")))
    model = MoTGPTModel(config, spec, vocab_size, max_sequence_length, mot=...)   # see model.py

The layer is our MoTLayer (same parameters, names and kernels) with Megatron's constructor and call
contract: built with (config, submodules, layer_number, hidden_dropout, pg_collection, vp_stage), called
by the block with keyword arguments, returning (hidden_states, context) with a viewless output. Its
TP group (size and rank) is the one in the `pg_collection` it is given (parallel_state only without
one), its config is checked field by field (settings.py: unsupported fields are refused by name). The
routing plan arrives in `packed_seq_params.routing_plan` (MoTPackedSeqParams): the argument Megatron
already hands every layer, and captures in its recompute closure, so recompute sees the same plan.
Parameters keep Megatron's tags (tensor_model_parallel / partition_dim / partition_stride; SP norms
`sequence_parallel`; QK-norms named q_layernorm / k_layernorm), so Megatron's DDP, distributed
optimizer and finalize_model_grads treat them as dense, data-parallel weights (never as experts).
`sharded_state_dict` saves every per-modality weight under a layout-independent key, fused blocks split
into their parts (linear_qkv.weight.<modality>.q / .k / .v, linear_fc1.weight.<modality>.gate / .up), so
Megatron's distributed checkpoints reshard across TP and PP.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import BaseTransformerLayer, get_transformer_layer_offset
from megatron.core.utils import make_viewless_tensor

from ..distributed import device as dev
from ..distributed.collectives import group_rank, group_size
from ..distributed.parallel_context import ParallelContext
from ..model.layer import MoTLayer
from ..tensor_parallel.param_meta import declared_partition
from .call_keywords import layer_packed_seq_params
from .settings import MoTOptions, settings_from_megatron

BLOCK_NAMES = {3: ("q", "k", "v"), 2: ("gate", "up")}


def _pp_rank(pg_collection):
    pp = getattr(pg_collection, "pp", None) if pg_collection is not None else None
    return group_rank(pp) if pp is not None else None


def _layer_offset(config, vp_stage, pp_rank):
    """get_transformer_layer_offset across megatron-core releases (0.12: config only; 0.13+: vp_stage;
    0.16: pp_rank too, taken from the layer's own pipeline group when it has one, else read from
    parallel_state, as older releases always do). Without initialised model parallelism and without a
    pipeline group there is one pipeline stage, so the offset is 0."""
    from megatron.core import parallel_state
    params = inspect.signature(get_transformer_layer_offset).parameters
    if "pp_rank" in params and pp_rank is not None:
        return get_transformer_layer_offset(config, vp_stage, pp_rank)
    if not parallel_state.model_parallel_is_initialized():
        return 0
    if "vp_stage" in params:
        return get_transformer_layer_offset(config, vp_stage)
    return get_transformer_layer_offset(config)


class MoTTransformerLayer(MoTLayer, BaseTransformerLayer):
    def __init__(self, config, submodules=None, layer_number: int = 1, hidden_dropout: Optional[float] = None,
                 pg_collection=None, vp_stage: Optional[int] = None, mot: MoTOptions = MoTOptions(), **unused):
        from megatron.core import parallel_state, tensor_parallel
        # the process groups the block hands us (0.13: `model_comm_pgs`; 0.14+: `pg_collection`); 0.12 has none
        pg_collection = pg_collection if pg_collection is not None else unused.get("model_comm_pgs")
        tp_group = getattr(pg_collection, "tp", None) if pg_collection is not None else None
        if tp_group is None:
            tp_group = parallel_state.get_tensor_model_parallel_group()
        number = layer_number + _layer_offset(config, vp_stage, _pp_rank(pg_collection))  # global, 1-based
        parallel = ParallelContext.of(tp_group, config.sequence_parallel)
        settings = settings_from_megatron(config, mot, parallel.tp_size)
        # the plan carries the attention mask exactly when one applies (document masking, or the caller's
        # attention_mask folded in by MoTGPTModel), so the layer always uses the plan's
        settings = settings.with_(document_masking=True)
        if hidden_dropout is not None:  # Megatron's per-layer override of config.hidden_dropout
            settings = settings.with_(hidden_dropout=hidden_dropout)
        on_accelerator = dev.accelerator_available()  # Megatron's RNG tracker exists only on CUDA
        tracker = tensor_parallel.get_cuda_rng_tracker() if on_accelerator else None
        device = dev.current_device() if on_accelerator and not config.use_cpu_initialization else None
        super().__init__(settings, number - 1, parallel=parallel, rng_tracker=tracker, device=device)
        self.config, self.layer_number, self.tp_group = config, number, tp_group  # Megatron's numbering
        self.pg_collection = pg_collection

    def forward(self, hidden_states, attention_mask=None, context=None, context_mask=None, **megatron_keywords):
        """Megatron's TransformerLayer call. Everything the MoT layer needs comes in the plan (MoTGPTModel folds
        attention_mask and position_ids into it); other inputs are refused by name, never ignored
        (call_keywords.py)."""
        packed = layer_packed_seq_params(dict(megatron_keywords, attention_mask=attention_mask, context=context,
                                              context_mask=context_mask))
        out = super().forward(hidden_states, packed.routing_plan, packed.rope)
        return make_viewless_tensor(inp=out, requires_grad=out.requires_grad, keep_graph=True), context

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        from megatron.core import parallel_state
        tp, tp_rank = group_size(self.tp_group), group_rank(self.tp_group)
        dp_group = (metadata or {}).get("dp_cp_group")  # 0.16 hands the DP group in; older releases read the global
        dp_rank = group_rank(dp_group) if dp_group is not None else \
            parallel_state.get_data_parallel_rank(with_context_parallel=True)
        out = {}
        for name, p in self.named_parameters():
            key = prefix + name
            # the TP tags as the layer defines them, also at TP = 1: keys must not depend on the TP size
            dim, blocks = declared_partition(p)
            if dim < 0:
                out[key] = ShardedTensor.from_rank_offsets(key, p, *sharded_offsets, replica_id=(0, tp_rank, dp_rank),
                                                           prepend_axis_num=len(sharded_offsets))
            elif not blocks:
                out[key] = ShardedTensor.from_rank_offsets(key, p, *sharded_offsets,
                                                           (dim + len(sharded_offsets), tp_rank, tp),
                                                           replica_id=(0, 0, dp_rank),
                                                           prepend_axis_num=len(sharded_offsets))
            else:
                out[key] = _blocks_factory(key, p, blocks, tp, tp_rank, dp_rank, sharded_offsets)
        return out


def _blocks_factory(key, p, blocks, tp, tp_rank, dp_rank, sharded_offsets):
    """A fused weight [q_r; k_r; v_r] (or [gate_r; up_r]) saved as its blocks, each TP-sharded on dim 0
    under its own key: the checkpoint does not depend on the TP size that wrote it."""
    local = [b // tp for b in blocks]
    names = BLOCK_NAMES.get(len(blocks), tuple(f"block{i}" for i in range(len(blocks))))
    n = len(sharded_offsets)

    @torch.no_grad()
    def build(k, t, replica_id, flattened_range):
        return {name: ShardedTensor.from_rank_offsets(f"{k}.{name}", part, *sharded_offsets, (n, tp_rank, tp),
                                                      replica_id=replica_id, prepend_axis_num=n)
                for name, part in zip(names, torch.split(t, local, dim=0))}

    def merge(sub):
        return torch.cat([sub[name] for name in names], dim=0)
    return ShardedTensorFactory(key, p, build, merge, replica_id=(0, 0, dp_rank))


def get_mot_layer_spec(options: MoTOptions = MoTOptions()) -> ModuleSpec:
    """The ModuleSpec of one MoT layer (pass it to GPTModel / TransformerBlock as the layer spec)."""
    return ModuleSpec(module=MoTTransformerLayer, params={"mot": options})
