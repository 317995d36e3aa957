"""Between MoTGPTModel and the universal checkpoint: parameter names and the model description.

Names (universal <-> MoTGPTModel; <i> is the global 0-based layer index, Megatron's layer_number - 1):
    embedding.word_embeddings.weight     <-> embedding.word_embeddings.weight
    layers.<i>.<param>[.<modality>]      <-> decoder.layers.<local>.<param>[.<modality>]   (same MoT names)
    head.final_norm.weight               <-> decoder.final_layernorm.weight
    head.output_layer.weight             <-> output_layer.weight    (absent when the embedding is tied)
The model description: the universal's config.yaml <-> the TransformerConfig fields, MoTOptions and
MoTGPTModel arguments that build the same model (MegatronSetup), so neither names nor config are
mapped by hand. A per-modality final norm (model.untie_final_norm) has no Megatron counterpart (the
block's final norm is shared) and is refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch.nn.functional as F

from ..config import Config, ConfigError, ffn_hidden_size, from_dict, num_kv_heads
from .settings import MoTOptions, qk_norm_of

SETUP_FORMAT = "mot_parallel.megatron/1"
_FIXED = {"normalization": "RMSNorm", "gated_linear_unit": True, "add_bias_linear": False}
_TO_MEGATRON = {"head.final_norm.weight": "decoder.final_layernorm.weight",
                "head.output_layer.weight": "output_layer.weight"}
_TO_UNIVERSAL = {v: k for k, v in _TO_MEGATRON.items()}


def megatron_name(canonical: str) -> str:
    """A universal (canonical) name -> the name in a whole (TP=1, PP=1) MoTGPTModel."""
    if canonical.startswith("layers."):
        return "decoder." + canonical
    return _TO_MEGATRON.get(canonical, canonical)


def canonical_name(name: str, layer_numbers) -> str:
    """A MoTGPTModel parameter name (local layer index) -> the universal name. `layer_numbers[local]` is
    the layer's Megatron layer_number (global, 1-based)."""
    if name.startswith("decoder.layers."):
        _, _, local, rest = name.split(".", 3)
        return f"layers.{layer_numbers[int(local)] - 1}.{rest}"
    if name in _TO_UNIVERSAL or name == "embedding.word_embeddings.weight":
        return _TO_UNIVERSAL.get(name, name)
    raise KeyError(f"MoTGPTModel parameter {name!r} has no universal-checkpoint counterpart (a MoT model has "
                   "embedding, MoT layers, final norm and output layer only)")


def canonical_names(model) -> Dict[str, Optional[str]]:
    """local name -> universal name for every parameter of one model chunk; None for a tied output layer
    (a copy of the embedding on the last pipeline stage)."""
    numbers = [layer.layer_number for layer in model.decoder.layers]
    tied = getattr(model, "share_embeddings_and_output_weights", False)
    return {n: None if tied and n == "output_layer.weight" else canonical_name(n, numbers)
            for n, _ in model.named_parameters()}


@dataclass(frozen=True)
class MegatronSetup:
    """What builds the MoTGPTModel a checkpoint holds:
        config = TransformerConfig(**setup.config_kwargs(), tensor_model_parallel_size=..., ...)
        model = MoTGPTModel(config, get_mot_layer_spec(setup.options), **setup.model, mot=setup.options)"""
    config: dict     # TransformerConfig fields that fix the architecture (activation_func by name)
    options: MoTOptions
    model: dict      # vocab_size (padded rows), max_sequence_length, share_embeddings_and_output_weights
    vocab_size: int  # the true vocabulary (rows beyond it are padding)

    def config_kwargs(self) -> dict:
        kw = dict(self.config)
        kw["activation_func"] = {"silu": F.silu}[kw["activation_func"]]
        return kw

    def to_json(self) -> dict:
        opts = asdict(self.options)
        opts["untie"] = sorted(opts["untie"])
        opts["modalities"] = list(opts["modalities"])
        return {"format": SETUP_FORMAT, "transformer_config": self.config, "mot_options": opts,
                "model": self.model, "vocab_size": self.vocab_size}

    @classmethod
    def from_json(cls, d: dict, where: str = "megatron.json") -> "MegatronSetup":
        if d.get("format") != SETUP_FORMAT:
            raise ValueError(f"{where}: format {d.get('format')!r}, expected {SETUP_FORMAT!r}")
        opts = dict(d["mot_options"], modalities=tuple(d["mot_options"]["modalities"]),
                    untie=frozenset(d["mot_options"]["untie"]))
        return cls(d["transformer_config"], MoTOptions(**opts), d["model"], d["vocab_size"])


def setup_from_config(cfg: Config, vocab_rows: int) -> MegatronSetup:
    """The Megatron description of the model in a universal checkpoint's config (`vocab_rows`: the
    padded vocabulary it was written with)."""
    m = cfg.model
    if m.continuous:
        raise ConfigError(f"model.continuous={sorted(m.continuous)}: the Megatron-Core plug-in has no continuous "
                          "modalities (the Transfusion setting: patch projections, timestep embedding, diffusion "
                          "loss); train and sample it with launch/pretrain.py and tools/sample.py")
    if m.untie_final_norm:
        raise ConfigError("model.untie_final_norm=true: Megatron's TransformerBlock has one shared final norm, so "
                          "this checkpoint has no MoTGPTModel counterpart")
    config = dict(num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_heads,
                  num_query_groups=num_kv_heads(cfg), ffn_hidden_size=ffn_hidden_size(cfg),
                  layernorm_epsilon=m.norm_eps, qk_layernorm=m.qk_norm, activation_func="silu",
                  hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout, init_method_std=m.init.std,
                  **_FIXED)
    if getattr(m, "qkv_bias", False):
        config["add_qkv_bias"] = True
    options = MoTOptions(modalities=tuple(m.modalities), untie=frozenset(m.untie), norm_placement=m.norm_placement,
                         rope_theta=m.rope_theta, document_masking=cfg.data.document_masking,
                         modality_copies=m.init.modality_copies, seed=cfg.train.seed)
    model = dict(vocab_size=vocab_rows, max_sequence_length=m.max_seq_len,
                 share_embeddings_and_output_weights=m.tie_embeddings)
    return MegatronSetup(config, options, model, m.vocab_size)


def setup_of_model(model, vocab_size: Optional[int] = None) -> MegatronSetup:
    """The same description, read from a built MoTGPTModel."""
    c, s = model.config, model.settings
    config = dict(num_layers=c.num_layers, hidden_size=c.hidden_size, num_attention_heads=c.num_attention_heads,
                  num_query_groups=s.num_kv_heads, ffn_hidden_size=c.ffn_hidden_size,
                  layernorm_epsilon=c.layernorm_epsilon, qk_layernorm=qk_norm_of(c, model.mot), activation_func="silu",
                  hidden_dropout=c.hidden_dropout, attention_dropout=c.attention_dropout,
                  init_method_std=c.init_method_std, **_FIXED)
    if getattr(c, "add_qkv_bias", False):
        config["add_qkv_bias"] = True
    m = dict(vocab_size=model.vocab_size, max_sequence_length=model.max_sequence_length,
             share_embeddings_and_output_weights=bool(model.share_embeddings_and_output_weights))
    return MegatronSetup(config, model.mot, m, vocab_size or model.vocab_size)


_ARCHITECTURE = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                 "layernorm_epsilon", "qk_layernorm", "add_qkv_bias")


def mismatches(want: MegatronSetup, have: MegatronSetup) -> list:
    """What differs between a checkpoint's model (`want`) and a built one (`have`), for loading."""
    out = [f"TransformerConfig.{k}: checkpoint {want.config.get(k)!r}, model {have.config.get(k)!r}"
           for k in _ARCHITECTURE if want.config.get(k) != have.config.get(k)]
    for k in ("modalities", "untie", "norm_placement", "rope_theta"):
        a, b = getattr(want.options, k), getattr(have.options, k)
        if a != b:
            out.append(f"MoTOptions.{k}: checkpoint {a!r}, model {b!r}"
                       + (" (modality ids index this tuple: same names, same order)" if k == "modalities" else ""))
    k = "share_embeddings_and_output_weights"
    if want.model[k] != have.model[k]:
        out.append(f"MoTGPTModel {k}: checkpoint {want.model[k]}, model {have.model[k]}")
    if have.model["vocab_size"] < want.vocab_size:
        out.append(f"MoTGPTModel vocab_size={have.model['vocab_size']} is smaller than the checkpoint's vocabulary "
                   f"({want.vocab_size} tokens)")
    return out


def universal_config(setup: MegatronSetup) -> Config:
    """The universal checkpoint's config.yaml for a Megatron-built model (the inverse of setup_from_config)."""
    c, o = setup.config, setup.options
    model = dict(hidden_size=c["hidden_size"], num_layers=c["num_layers"], num_heads=c["num_attention_heads"],
                 num_kv_heads=c["num_query_groups"], ffn_hidden_size=c["ffn_hidden_size"],
                 vocab_size=setup.vocab_size, max_seq_len=setup.model["max_sequence_length"], rope_theta=o.rope_theta,
                 norm_eps=c["layernorm_epsilon"], modalities=list(o.modalities), untie=sorted(o.untie),
                 norm_placement=o.norm_placement, qk_norm=c["qk_layernorm"],
                 tie_embeddings=setup.model["share_embeddings_and_output_weights"],
                 attention_dropout=c["attention_dropout"], hidden_dropout=c["hidden_dropout"],
                 init={"std": c["init_method_std"], "modality_copies": o.modality_copies})
    if c.get("add_qkv_bias"):
        model["qkv_bias"] = True
    return from_dict(Config, {"model": model, "train": {"seed": o.seed},
                              "data": {"document_masking": o.document_masking}})
