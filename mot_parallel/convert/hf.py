"""A Hugging Face Llama-architecture checkpoint -> an MoT universal checkpoint (upcycling).

Every modality's copy of every untied part starts as the dense weight (`modality_copies:
shared_start`), pre-norm, so the converted MoT computes exactly the dense model for any modality
assignment. Mapping (per layer i, per modality m):
    q/k/v_proj          -> layers.i.self_attention.linear_qkv.weight.m   ([q; k; v], our canonical layout)
    o_proj              -> layers.i.self_attention.linear_proj.weight.m
    gate/up_proj        -> layers.i.mlp.linear_fc1.weight.m              ([gate; up])
    down_proj           -> layers.i.mlp.linear_fc2.weight.m
    input_layernorm     -> layers.i.attn_norm.weight.m
    post_attention_ln   -> layers.i.ffn_norm.weight.m
    model.norm          -> head.final_norm.weight(.m)      embed_tokens -> embedding.word_embeddings.weight
    lm_head             -> head.output_layer.weight        (tied checkpoints: model.tie_embeddings=true)
HF Llama's RoPE is rotate-half on weights already laid out for it, which is ours: no permutation.
Rejected with a clear error: rope_scaling, attention/MLP biases, a head_dim other than hidden/heads,
activations other than SiLU.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, Sequence, Tuple

import torch
from safetensors import safe_open

from ..config import ConfigError, load_config
from ..model.settings import ModelSettings
from .names import fit_vocab
from .universal import write_universal


def _hf_tensors(hf_dir: str) -> Dict[str, Tuple[str, str]]:
    """tensor name -> file, from model.safetensors or its sharded index."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return {k: os.path.join(hf_dir, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(single):
        raise FileNotFoundError(f"{hf_dir}: no model.safetensors(.index.json); save the model with safetensors")
    with safe_open(single, "pt") as st:
        return {k: single for k in st.keys()}


def hf_config_overrides(hf: dict) -> list:
    """Our config keys from a HF Llama config.json (errors name what is not supported)."""
    problems = []
    # transformers < 5: rope_theta + rope_scaling at the top level; >= 5: rope_parameters {rope_theta, rope_type}
    rope = hf.get("rope_parameters") or {}
    theta = float(hf.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        problems.append(f"RoPE scaling ({hf.get('rope_scaling') or rope}) is not supported (plain RoPE only)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("attention_bias / mlp_bias are not supported (MoT layers have no biases)")
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads={hidden // heads}")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r}: only SwiGLU (silu) FFNs are supported")
    if problems:
        raise ConfigError("cannot convert this checkpoint:\n  - " + "\n  - ".join(problems))
    return [f"model.hidden_size={hidden}", f"model.num_layers={hf['num_hidden_layers']}",
            f"model.num_heads={heads}", f"model.num_kv_heads={hf.get('num_key_value_heads') or heads}",
            f"model.ffn_hidden_size={hf['intermediate_size']}", f"model.vocab_size={hf['vocab_size']}",
            f"model.rope_theta={theta}", f"model.norm_eps={float(hf['rms_norm_eps'])}",
            f"model.tie_embeddings={str(bool(hf.get('tie_word_embeddings', False))).lower()}",
            "model.norm_placement=pre", "model.init.modality_copies=shared_start", "model.qk_norm=false"]


def hf_to_universal(hf_dir: str, out: str, modalities: Sequence[str], base_config: str = None,
                    overrides: Sequence[str] = ()) -> ModelSettings:
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    cfg = load_config(base_config, hf_config_overrides(hf) + [f"model.modalities=[{','.join(modalities)}]"]
                      + list(overrides))
    s = ModelSettings.from_config(cfg)
    files = _hf_tensors(hf_dir)
    handles: Dict[str, object] = {}

    def get(name: str) -> torch.Tensor:
        if name not in files:
            raise KeyError(f"{hf_dir}: missing tensor {name!r}")
        if files[name] not in handles:
            handles[files[name]] = safe_open(files[name], "pt")
        return handles[files[name]].get_tensor(name).float()

    def per_modality(name: str, part: str, t: torch.Tensor) -> Iterator[Tuple[str, torch.Tensor]]:
        if part in s.untie:
            for m in s.modalities:
                yield f"{name}.{m}", t.clone()  # separate storage: safetensors refuses shared tensors
        else:
            yield name, t

    def tensors():
        embed = get("model.embed_tokens.weight")
        yield "embedding.word_embeddings.weight", fit_vocab(embed, s.padded_vocab(1))
        for i in range(s.num_layers):
            hp, lp = f"model.layers.{i}.", f"layers.{i}."
            qkv = torch.cat([get(hp + f"self_attn.{x}_proj.weight") for x in "qkv"])
            fc1 = torch.cat([get(hp + "mlp.gate_proj.weight"), get(hp + "mlp.up_proj.weight")])
            yield from per_modality(lp + "attn_norm.weight", "norms", get(hp + "input_layernorm.weight"))
            yield from per_modality(lp + "self_attention.linear_qkv.weight", "attention", qkv)
            yield from per_modality(lp + "self_attention.linear_proj.weight", "attention", get(hp + "self_attn.o_proj.weight"))
            yield from per_modality(lp + "ffn_norm.weight", "norms", get(hp + "post_attention_layernorm.weight"))
            yield from per_modality(lp + "mlp.linear_fc1.weight", "ffn", fc1)
            yield from per_modality(lp + "mlp.linear_fc2.weight", "ffn", get(hp + "mlp.down_proj.weight"))
        norm = get("model.norm.weight")
        if s.untie_final_norm:
            for m in s.modalities:
                yield f"head.final_norm.weight.{m}", norm.clone()
        else:
            yield "head.final_norm.weight", norm
        if not s.tie_embeddings:
            lm_head = get("lm_head.weight") if "lm_head.weight" in files else embed
            yield "head.output_layer.weight", fit_vocab(lm_head, s.padded_vocab(1))

    write_universal(out, cfg, tensors(), {"step": 0, "has_optimizer": False, "vocab_rows": s.padded_vocab(1),
                                          "vocab_size": s.vocab_size, "source": os.path.abspath(hf_dir)},
                    {"step": 0})
    return s
