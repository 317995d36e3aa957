"""Megatron's TransformerConfig + MoTOptions -> our ModelSettings, refusing what the MoT layer does not compute.

The MoT layer has fixed math (pre- or post-norm RMSNorm, per-modality bias-free Q/K/V/O and SwiGLU FFN,
optional per-head RMS QK-norm, rotate-half RoPE, one global causal softmax attention). A TransformerConfig
field that would change that math is either honoured or refused here, by name, before any weight exists.

Honoured: num_layers, hidden_size, num_attention_heads, num_query_groups, ffn_hidden_size,
  layernorm_epsilon, hidden_dropout (or the layer's `hidden_dropout` argument), attention_dropout,
  init_method_std, params_dtype, perform_initialization, use_cpu_initialization, sequence_parallel,
  qk_layernorm (the MoT QK-norm: one source of truth, see MoTOptions.qk_norm), add_qkv_bias (only where
  ModelSettings has a `qkv_bias` field), pipeline split and virtual stages (layer numbering).
Required (anything else is refused, naming the field and the value to set):
  normalization='RMSNorm' (Megatron also builds the final norm from it), gated_linear_unit=True,
  activation_func=F.silu, add_bias_linear=False, add_qkv_bias=False (without qkv_bias support),
  kv_channels=hidden_size/num_attention_heads, softmax_scale=None, softmax_type='vanilla',
  rotary_interleaved=False, layernorm_zero_centered_gamma=False,
  apply_residual_connection_post_layernorm=False, fp32_residual_connection=False, window_size=None,
  num_moe_experts=None, multi_latent_attention=False, attention_output_gate=False, qk_clip=False,
  log_max_attention_logit=False, no_rope_freq=None, experimental_attention_variant=None,
  linear_attention_freq=None, mrope_section=None, glu_linear_offset=0, activation_func_clamp_value=None,
  context_parallel_size=1 and mtp_num_layers=None (both assume tokens in sequence order; MoT runs them
  grouped by modality), fp8/fp4/quant_recipe=None, use_kitchen=False, heterogeneous_block_specs=False,
  recompute_granularity None or 'full' (selective recompute names Megatron's own submodules),
  CUDA graphs off (enable_cuda_graph, external_cuda_graph, cuda_graph_impl: MoT shapes change with
  every micro-batch's modality counts).
No effect on the math, so not checked: kernel fusions (bias_*_fusion, masked_softmax_fusion,
  apply_rope_fusion, persist_layer_norm, ...), attention_backend (the layer uses torch SDPA),
  apply_query_key_layer_scaling / attention_softmax_in_fp32 (numerics of Megatron's own softmax), and
  init_method / output_layer_init_method: MoT weights are drawn layout-independently from MoTOptions.seed
  with init_method_std (output projections scaled by depth, as Megatron's default); the embedding and
  output layer are Megatron's and use its init callables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import List, Optional, Tuple

import torch.nn.functional as F

from ..model.settings import ModelSettings

PARTS = ("attention", "ffn", "norms")


@dataclass(frozen=True)
class MoTOptions:
    """What Megatron's TransformerConfig does not describe.

    qk_norm: None (default) follows TransformerConfig.qk_layernorm, the one source of truth: Megatron's
    finalize_model_grads sums QK-norm gradients over TP only when the config says so, so a layer with
    QK-norms under a config without them would train divergent TP replicas. An explicit value must agree
    with the config."""
    modalities: Tuple[str, ...] = ("text", "image")
    untie: frozenset = field(default_factory=lambda: frozenset(PARTS))
    norm_placement: str = "pre"
    qk_norm: Optional[bool] = None
    rope_theta: float = 10000.0
    document_masking: bool = True
    modality_copies: str = "independent"
    seed: int = 1234


def _is(value):
    return lambda v: v == value


# (field, accepts(value), what to set). Fields missing from an older megatron-core are skipped.
_REQUIRED = (
    ("normalization", _is("RMSNorm"), "'RMSNorm' (MoT norms are RMSNorm; Megatron builds the final norm from "
                                      "this field)"),
    ("gated_linear_unit", _is(True), "True (the MoT FFN is SwiGLU)"),
    ("activation_func", lambda v: v is F.silu, "torch.nn.functional.silu (the MoT FFN is SwiGLU)"),
    ("add_bias_linear", _is(False), "False (MoT linear layers have no biases)"),
    ("layernorm_zero_centered_gamma", _is(False), "False"),
    ("apply_residual_connection_post_layernorm", _is(False), "False"),
    ("fp32_residual_connection", _is(False), "False"),
    ("softmax_scale", lambda v: v is None, "None (attention scales by 1/sqrt(head_dim))"),
    ("softmax_type", _is("vanilla"), "'vanilla'"),
    ("rotary_interleaved", _is(False), "False (RoPE is rotate-half, Megatron's default layout)"),
    ("window_size", lambda v: v is None, "None (one global causal attention)"),
    ("num_moe_experts", lambda v: not v, "None (MoT routes by modality, not by a learned router)"),
    ("multi_latent_attention", _is(False), "False"),
    ("attention_output_gate", _is(False), "False"),
    ("qk_clip", _is(False), "False (needs attention logits the MoT attention does not report)"),
    ("log_max_attention_logit", _is(False), "False (needs attention logits the MoT attention does not report)"),
    ("no_rope_freq", lambda v: v is None, "None (RoPE in every layer)"),
    ("experimental_attention_variant", lambda v: v is None, "None"),
    ("linear_attention_freq", lambda v: v is None, "None"),
    ("mrope_section", lambda v: v is None, "None"),
    ("glu_linear_offset", _is(0.0), "0.0"),
    ("activation_func_clamp_value", lambda v: v is None, "None"),
    ("context_parallel_size", _is(1), "1 (context parallelism splits the sequence in order; MoT layers hold "
                                      "tokens grouped by modality)"),
    ("mtp_num_layers", lambda v: not v, "None (multi-token prediction shifts tokens in sequence order; MoT "
                                        "layers hold them grouped by modality)"),
    ("fp8", lambda v: v is None, "None (MoT linears do not run FP8)"),
    ("fp4", lambda v: v is None, "None (MoT linears do not run FP4)"),
    ("quant_recipe", lambda v: v is None, "None"),
    ("use_kitchen", _is(False), "False"),
    ("heterogeneous_block_specs", _is(False), "False"),
    ("recompute_granularity", lambda v: v in (None, "full"),
     "None or 'full' (selective recompute names Megatron's own submodules, which the MoT layer does not have)"),
    ("enable_cuda_graph", _is(False), "False (MoT shapes follow each micro-batch's modality counts)"),
    ("external_cuda_graph", _is(False), "False (MoT shapes follow each micro-batch's modality counts)"),
    ("cuda_graph_impl", lambda v: v in ("none", None), "'none' (MoT shapes follow each micro-batch's modality "
                                                     "counts)"),
)
_MISSING = object()


def has_qkv_bias_support() -> bool:
    return any(f.name == "qkv_bias" for f in fields(ModelSettings))


def qk_norm_of(config, options: MoTOptions) -> bool:
    return bool(getattr(config, "qk_layernorm", False)) if options.qk_norm is None else options.qk_norm


def config_problems(config, options: MoTOptions, tp_size: int = 1) -> List[str]:
    """Every reason the MoT layer cannot compute what `config` + `options` describe (empty: fine)."""
    problems = []
    for name, accepts, want in _REQUIRED:
        value = getattr(config, name, _MISSING)
        if value is not _MISSING and not accepts(value):
            problems.append(f"TransformerConfig.{name}={_show(value)}: set {name}={want}")
    if getattr(config, "add_qkv_bias", False) and not has_qkv_bias_support():
        problems.append("TransformerConfig.add_qkv_bias=True: MoT attention has no Q/K/V biases in this version; "
                        "set add_qkv_bias=False")
    heads, hidden = config.num_attention_heads, config.hidden_size
    if heads <= 0 or hidden % heads:
        problems.append(f"TransformerConfig.hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    elif getattr(config, "kv_channels", None) not in (None, hidden // heads):
        problems.append(f"TransformerConfig.kv_channels={config.kv_channels}: MoT heads are hidden_size / "
                        f"num_attention_heads = {hidden // heads} wide; set kv_channels=None")
    kv = config.num_query_groups or heads
    sizes = (("num_attention_heads", heads), ("num_query_groups", kv), ("ffn_hidden_size", config.ffn_hidden_size))
    for what, n in sizes:
        if n and n % tp_size:
            problems.append(f"TransformerConfig.{what}={n} is not divisible by the tensor-parallel group size "
                            f"{tp_size}")
    if options.qk_norm is not None and options.qk_norm != bool(getattr(config, "qk_layernorm", False)):
        problems.append(
            f"MoTOptions.qk_norm={options.qk_norm} but TransformerConfig.qk_layernorm="
            f"{getattr(config, 'qk_layernorm', False)}: Megatron's finalize_model_grads sums QK-norm gradients over "
            f"tensor-parallel ranks only when qk_layernorm=True, so the replicas would diverge. Set "
            f"TransformerConfig(qk_layernorm=...) and leave MoTOptions.qk_norm unset (it follows the config)")
    problems += _option_problems(options)
    return problems


def _option_problems(options: MoTOptions) -> List[str]:
    out, mods = [], tuple(options.modalities)
    if not mods or len(set(mods)) != len(mods) or not all(isinstance(m, str) and m and "." not in m for m in mods):
        out.append(f"MoTOptions.modalities={mods!r}: give one or more distinct names without '.' "
                   "(they become parameter-name suffixes)")
    if not set(options.untie) <= set(PARTS):
        out.append(f"MoTOptions.untie={sorted(options.untie)!r}: choose a subset of {list(PARTS)}")
    if options.norm_placement not in ("pre", "post"):
        out.append(f"MoTOptions.norm_placement={options.norm_placement!r}: choose 'pre' or 'post'")
    if options.modality_copies not in ("independent", "shared_start"):
        out.append(f"MoTOptions.modality_copies={options.modality_copies!r}: choose 'independent' or 'shared_start'")
    if not (options.rope_theta > 0 and math.isfinite(options.rope_theta)):
        out.append(f"MoTOptions.rope_theta={options.rope_theta}: must be a positive finite number")
    return out


def check_megatron_config(config, options: MoTOptions, tp_size: int = 1) -> None:
    problems = config_problems(config, options, tp_size)
    if problems:
        raise ValueError("the MoT layer cannot honour this Megatron configuration:\n  - " + "\n  - ".join(problems))


def settings_from_megatron(config, options: MoTOptions, tp_size: int = 1) -> ModelSettings:
    """Our ModelSettings from Megatron's TransformerConfig + the MoT options, for a TP group of `tp_size`
    (the group the layer is given: sequence parallelism is a no-op on a group of one)."""
    check_megatron_config(config, options, tp_size)
    heads = config.num_attention_heads
    extra = {"qkv_bias": bool(getattr(config, "add_qkv_bias", False))} if has_qkv_bias_support() else {}
    return ModelSettings(
        hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=heads,
        num_kv_heads=config.num_query_groups or heads, ffn_hidden_size=config.ffn_hidden_size,
        vocab_size=1, vocab_multiple=1, modalities=tuple(options.modalities), untie=frozenset(options.untie),
        norm_placement=options.norm_placement, qk_norm=qk_norm_of(config, options), norm_eps=config.layernorm_epsilon,
        rope_theta=options.rope_theta, attention_dropout=config.attention_dropout,
        hidden_dropout=config.hidden_dropout, init_std=config.init_method_std, modality_copies=options.modality_copies,
        seed=options.seed,
        document_masking=options.document_masking, params_dtype=config.params_dtype,
        perform_initialization=config.perform_initialization, **extra)


def _show(value) -> str:
    return getattr(value, "__qualname__", None) or repr(value)
