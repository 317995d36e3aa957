"""The MoT layer as a Megatron-Core transformer layer: a ModuleSpec that `TransformerBlock` replicates.

    from mot_parallel.megatron import MoTOptions, get_mot_layer_spec
    spec = get_mot_layer_spec(MoTOptions(modalities=("text", "image"), qk_norm=True))
    model = MoTGPTModel(config, spec, vocab_size, max_sequence_length, mot=...)   # see model.py

The layer is our MoTLayer (same parameters, names and kernels) with Megatron's constructor and call
contract: built with (config, submodules, layer_number, hidden_dropout, pg_collection, vp_stage), called
by the block with keyword arguments, returning (hidden_states, context) with a viewless output. The
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
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import BaseTransformerLayer, get_transformer_layer_offset
from megatron.core.utils import make_viewless_tensor

from ..distributed import device as dev
from ..distributed.collectives import group_rank, group_size
from ..model.layer import MoTLayer
from ..model.settings import ModelSettings
from ..tensor_parallel.param_meta import declared_partition

BLOCK_NAMES = {3: ("q", "k", "v"), 2: ("gate", "up")}


@dataclass(frozen=True)
class MoTOptions:
    """What Megatron's TransformerConfig does not describe."""
    modalities: Tuple[str, ...] = ("text", "image")
    untie: frozenset = field(default_factory=lambda: frozenset({"attention", "ffn", "norms"}))
    norm_placement: str = "pre"
    qk_norm: bool = False
    rope_theta: float = 10000.0
    document_masking: bool = True
    modality_copies: str = "independent"
    seed: int = 1234


def settings_from_megatron(config, options: MoTOptions) -> ModelSettings:
    """Our ModelSettings from Megatron's TransformerConfig + the MoT options."""
    heads = config.num_attention_heads
    return ModelSettings(
        hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=heads,
        num_kv_heads=config.num_query_groups or heads, ffn_hidden_size=config.ffn_hidden_size,
        vocab_size=1, vocab_multiple=1, modalities=tuple(options.modalities), untie=frozenset(options.untie),
        norm_placement=options.norm_placement, qk_norm=options.qk_norm, norm_eps=config.layernorm_epsilon,
        rope_theta=options.rope_theta, attention_dropout=config.attention_dropout,
        hidden_dropout=config.hidden_dropout, init_std=config.init_method_std, modality_copies=options.modality_copies,
        seed=options.seed, sequence_parallel=config.sequence_parallel,
        document_masking=options.document_masking, params_dtype=config.params_dtype,
        perform_initialization=config.perform_initialization)


def _layer_offset(config, vp_stage):
    """get_transformer_layer_offset across megatron-core releases (0.12: config only; 0.13+: vp_stage;
    0.16: pp_rank too, read from parallel_state when omitted, as older releases always do). Without
    initialised model parallelism there is one pipeline stage, so the offset is 0."""
    from megatron.core import parallel_state
    if not parallel_state.model_parallel_is_initialized():
        return 0
    params = inspect.signature(get_transformer_layer_offset).parameters
    return get_transformer_layer_offset(config, vp_stage) if "vp_stage" in params else get_transformer_layer_offset(config)


class MoTTransformerLayer(MoTLayer, BaseTransformerLayer):
    def __init__(self, config, submodules=None, layer_number: int = 1, hidden_dropout: Optional[float] = None,
                 pg_collection=None, vp_stage: Optional[int] = None, mot: MoTOptions = MoTOptions(), **unused):
        from megatron.core import parallel_state, tensor_parallel
        tp_group = pg_collection.tp if pg_collection is not None else parallel_state.get_tensor_model_parallel_group()
        number = layer_number + _layer_offset(config, vp_stage)  # global, 1-based
        settings = settings_from_megatron(config, mot)
        on_accelerator = dev.accelerator_available()  # Megatron's RNG tracker exists only on CUDA
        tracker = tensor_parallel.get_cuda_rng_tracker() if on_accelerator else None
        device = dev.current_device() if on_accelerator and not config.use_cpu_initialization else None
        super().__init__(settings, number - 1, tp_group=tp_group, rng_tracker=tracker, device=device)
        self.config, self.layer_number, self.tp_group = config, number, tp_group  # Megatron's numbering

    def forward(self, hidden_states, attention_mask=None, context=None, context_mask=None, rotary_pos_emb=None,
                rotary_pos_cos=None, rotary_pos_sin=None, attention_bias=None, inference_context=None,
                packed_seq_params=None, sequence_len_offset=None, **unused):
        plan = getattr(packed_seq_params, "routing_plan", None)
        if plan is None:
            raise ValueError("MoTTransformerLayer needs the routing plan in packed_seq_params "
                             "(MoTPackedSeqParams); run it through MoTGPTModel or build one with build_routing_plan")
        out = super().forward(hidden_states, plan, packed_seq_params.rope)
        return make_viewless_tensor(inp=out, requires_grad=out.requires_grad, keep_graph=True), context

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        from megatron.core import parallel_state
        tp, tp_rank = group_size(self.tp_group), group_rank(self.tp_group)
        dp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
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
