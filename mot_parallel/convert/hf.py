"""A Hugging Face Llama or Qwen2 checkpoint -> an MoT universal checkpoint (upcycling).

    python tools/convert_checkpoint.py hf-to-mot --hf llama_dir --out mot_start --modalities text image

Families: `model_type` llama (LlamaForCausalLM: Llama 2/3/3.1+, GQA, Llama-3 RoPE scaling) and qwen2
(Qwen2ForCausalLM: Qwen2/2.5, BAGEL's base; q/k/v biases -> `model.qkv_bias=true`). Every modality's copy
of every untied part starts as the dense weight (`modality_copies: shared_start`), pre-norm, so the
converted MoT computes exactly the dense model for any modality assignment. Mapping (per layer i, per
modality m when the part is untied; `layer_map` is the table, shared with the way back in hf_export.py):
    q/k/v_proj.weight   -> layers.i.self_attention.linear_qkv.weight.m   ([q; k; v], our canonical layout)
    q/k/v_proj.bias     -> layers.i.self_attention.linear_qkv.bias.m     (Qwen2)
    o_proj              -> layers.i.self_attention.linear_proj.weight.m
    gate/up_proj        -> layers.i.mlp.linear_fc1.weight.m              ([gate; up])
    down_proj           -> layers.i.mlp.linear_fc2.weight.m
    input_layernorm     -> layers.i.attn_norm.weight.m
    post_attention_ln   -> layers.i.ffn_norm.weight.m
    model.norm          -> head.final_norm.weight(.m)      embed_tokens -> embedding.word_embeddings.weight
    lm_head             -> head.output_layer.weight        (tied checkpoints: model.tie_embeddings=true)
config.json -> model.*: sizes, rms_norm_eps, rope_theta, rope_scaling (llama3), max_position_embeddings
-> model.max_seq_len (override it to train shorter), tie_word_embeddings.
HF's RoPE is rotate-half on weights already laid out for it, which is ours: no permutation.

Refused with one clear line, before anything is written: another model_type/architecture; RoPE scaling
other than llama3 (linear, dynamic, yarn, longrope, ...) or partial rotary; Llama's attention_bias (it also
biases o_proj) / mlp_bias; Qwen2 sliding-window attention; head_dim other than hidden/heads; activations
other than SiLU; quantized checkpoints; a command-line override that contradicts config.json; and any
tensor missing, of the wrong shape, or present but unused by the conversion (a checkpoint whose weights
would otherwise be silently dropped).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from safetensors import safe_open

from ..config import ConfigError, load_config, validate
from ..model.rope import ROPE_TYPES, inverse_frequencies
from ..model.settings import ModelSettings
from .canonical_names import fit_vocab
from .universal import write_universal

FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
REQUIRED_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "vocab_size", "rms_norm_eps")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# settings a command-line override may not change: they describe the checkpoint's weights
FROM_CHECKPOINT = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size",
                   "norm_eps", "rope_theta", "rope_scaling", "tie_embeddings", "qkv_bias", "qk_norm",
                   "norm_placement")


class ConversionError(ConfigError):
    """A checkpoint this conversion does not handle; the message is one line naming what and why."""


def _refuse(where: str, problems: Sequence[str]) -> None:
    if problems:
        raise ConversionError(f"cannot convert {where}: " + "; ".join(problems))


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read ({e.strerror}); point --hf at a Hugging Face model directory")
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})")
    missing = [k for k in REQUIRED_KEYS if not isinstance(hf, dict) or k not in hf]
    if missing:
        raise ConversionError(f"{path}: no {', '.join(missing)}; not a Hugging Face causal-LM config")
    return hf


def hf_family(hf: dict) -> str:
    """'llama' or 'qwen2', from model_type and architectures (errors name the supported families)."""
    kind, archs = hf.get("model_type"), hf.get("architectures") or []
    supported = ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())
    if kind not in FAMILIES:
        raise ConversionError(f"model_type={kind!r} is not supported; supported families: {supported}")
    wrong = [a for a in archs if a != FAMILIES[kind]]
    if wrong:
        raise ConversionError(f"architectures={wrong} is not supported for model_type={kind!r}; "
                              f"supported: {FAMILIES[kind]} (a causal LM with lm_head)")
    return kind


def hf_rope(hf: dict, problems: List[str]) -> Tuple[float, dict]:
    """(theta, llama3 parameters or {}) from either config format: transformers < 5 writes rope_theta and
    rope_scaling at the top level, >= 5 one rope_parameters mapping."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        problems.append(f"partial_rotary_factor={partial} is not supported (RoPE on the whole head only)")
    if kind not in ROPE_TYPES:
        problems.append(f"RoPE scaling rope_type={kind!r} is not supported (supported: {', '.join(ROPE_TYPES)}; "
                        "linear, dynamic, yarn, longrope and any other are refused)")
        return theta, {}
    if kind == "default":
        return theta, {}
    missing = [k for k in LLAMA3_KEYS if k not in params]
    if missing:
        problems.append(f"RoPE scaling llama3 without {missing}")
        return theta, {}
    return theta, {k: params[k] for k in LLAMA3_KEYS}


def _family_problems(hf: dict, family: str) -> List[str]:
    problems = []
    if family == "llama":
        if hf.get("attention_bias"):
            problems.append("attention_bias=true is not supported (Llama's puts biases on o_proj too; "
                            "only q/k/v biases, as in Qwen2, are)")
        if hf.get("mlp_bias"):
            problems.append("mlp_bias=true is not supported (MoT FFNs have no biases)")
    else:
        if hf.get("use_sliding_window"):
            problems.append(f"use_sliding_window=true is not supported (sliding-window attention on layers >= "
                            f"max_window_layers={hf.get('max_window_layers')}; MoT attention is global)")
        sliding = sorted({t for t in hf.get("layer_types") or [] if t != "full_attention"})
        if sliding:
            problems.append(f"layer_types {sliding} are not supported (full_attention only)")
    return problems


def hf_config_overrides(hf: dict) -> list:
    """Our config keys from a HF config.json (ConversionError names everything not supported)."""
    family, problems = hf_family(hf), []
    problems += _family_problems(hf, family)
    theta, llama3 = hf_rope(hf, problems)
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("head_dim") not in (None, hidden // heads):
        problems.append(f"head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads={hidden // heads}")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r}: only SwiGLU (silu) FFNs are supported")
    if hf.get("quantization_config"):
        problems.append("quantized checkpoints (quantization_config) are not supported; convert the "
                        "unquantized weights")
    _refuse("this checkpoint", problems)
    out = [f"model.hidden_size={hidden}", f"model.num_layers={hf['num_hidden_layers']}",
           f"model.num_heads={heads}", f"model.num_kv_heads={hf.get('num_key_value_heads') or heads}",
           f"model.ffn_hidden_size={hf['intermediate_size']}", f"model.vocab_size={hf['vocab_size']}",
           f"model.rope_theta={theta}", f"model.norm_eps={float(hf['rms_norm_eps'])}",
           f"model.tie_embeddings={str(bool(hf.get('tie_word_embeddings', False))).lower()}",
           f"model.qkv_bias={str(family == 'qwen2').lower()}",
           "model.norm_placement=pre", "model.init.modality_copies=shared_start", "model.qk_norm=false"]
    if hf.get("max_position_embeddings"):
        out.append(f"model.max_seq_len={hf['max_position_embeddings']}")
    if llama3:
        out += ["model.rope_scaling.rope_type=llama3"] + [f"model.rope_scaling.{k}={v}" for k, v in llama3.items()]
    return out


def layer_map(s: ModelSettings) -> List[Tuple[str, str, Tuple[str, ...]]]:
    """(our name inside layer i, untie part, the HF names inside layer i fused into it, in order)."""
    qkv = tuple(f"self_attn.{x}_proj.weight" for x in "qkv")
    rows = [("attn_norm.weight", "norms", ("input_layernorm.weight",)),
            ("self_attention.linear_qkv.weight", "attention", qkv)]
    if s.qkv_bias:
        rows.append(("self_attention.linear_qkv.bias", "attention", tuple(n[:-6] + "bias" for n in qkv)))
    return rows + [("self_attention.linear_proj.weight", "attention", ("self_attn.o_proj.weight",)),
                   ("ffn_norm.weight", "norms", ("post_attention_layernorm.weight",)),
                   ("mlp.linear_fc1.weight", "ffn", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
                   ("mlp.linear_fc2.weight", "ffn", ("mlp.down_proj.weight",))]


def hf_shapes(s: ModelSettings) -> Dict[str, Tuple[int, ...]]:
    """Every tensor of the equivalent HF checkpoint -> its shape."""
    h, f, q, kv = s.hidden_size, s.ffn_hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    layer = {"input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
             "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
             "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
             "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f)}
    if s.qkv_bias:
        layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,)})
    out = {"model.embed_tokens.weight": (s.vocab_size, h), "model.norm.weight": (h,)}
    if not s.tie_embeddings:
        out["lm_head.weight"] = (s.vocab_size, h)
    for i in range(s.num_layers):
        out.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    return out


def _hf_tensors(hf_dir: str) -> Dict[str, str]:
    """tensor name -> file, from model.safetensors or its sharded index."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return {k: os.path.join(hf_dir, v) for k, v in json.load(f)["weight_map"].items()}
    single = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(single):
        raise ConversionError(f"{hf_dir}: no model.safetensors(.index.json); save the model with safetensors "
                              "(pickled .bin checkpoints are never loaded: they can run code)")
    with safe_open(single, "pt") as st:
        return {k: single for k in st.keys()}


class _Reader:
    """Lazy tensor access across the checkpoint's files."""

    def __init__(self, files: Dict[str, str]):
        self.files, self.handles = files, {}

    def _handle(self, name: str):
        if self.files[name] not in self.handles:
            self.handles[self.files[name]] = safe_open(self.files[name], "pt")
        return self.handles[self.files[name]]

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._handle(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._handle(name).get_tensor(name).float()


def _tensor_problems(s: ModelSettings, reader: _Reader) -> List[str]:
    """Missing, unused or misshaped tensors; tolerated: rotary inv_freq buffers equal to ours, and an
    lm_head equal to the embedding in a tied checkpoint."""
    expected, present = hf_shapes(s), set(reader.files)
    inv_freq = inverse_frequencies(s.head_dim, s.rope_theta, s.rope_scaling)
    unused = []
    for name in sorted(present - set(expected)):
        if name.endswith("rotary_emb.inv_freq") and torch.allclose(reader.get(name), inv_freq, rtol=1e-5):
            continue
        if name == "lm_head.weight" and s.tie_embeddings and \
                torch.equal(reader.get(name), reader.get("model.embed_tokens.weight")):
            continue
        unused.append(name)
    missing = sorted(set(expected) - present)
    shapes = [f"{n} has shape {list(reader.shape(n))}, config.json implies {list(expected[n])}"
              for n in sorted(present & set(expected)) if reader.shape(n) != expected[n]]

    def listed(names):
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return ([f"tensors the conversion would not use: {listed(unused)}"] if unused else []) + \
        ([f"missing tensors: {listed(missing)}"] if missing else []) + shapes[:4]


def _override_problems(s: ModelSettings, s0: ModelSettings) -> List[str]:
    return [f"model.{k}={getattr(s, k)} contradicts the checkpoint ({getattr(s0, k)})"
            for k in FROM_CHECKPOINT if getattr(s, k) != getattr(s0, k)]


def hf_to_universal(hf_dir: str, out: str, modalities: Sequence[str], base_config: str = None,
                    overrides: Sequence[str] = ()) -> ModelSettings:
    """Convert; every check runs before anything is written. Raises ConversionError (one line)."""
    derived = hf_config_overrides(read_hf_config(hf_dir)) + [f"model.modalities=[{','.join(modalities)}]"]
    cfg = load_config(base_config, derived + list(overrides))
    validate(cfg)
    s, s0 = ModelSettings.from_config(cfg), ModelSettings.from_config(load_config(base_config, derived))
    if s.continuous:
        raise ConversionError(f"{hf_dir}: model.continuous={[c.name for c in s.continuous]}: a causal LM has no "
                              "patch projections to upcycle; convert with discrete modalities, then add the "
                              "continuous ones to a config trained from scratch")
    reader = _Reader(_hf_tensors(hf_dir))
    _refuse(hf_dir, _override_problems(s, s0) + _tensor_problems(s, reader))

    def per_modality(name: str, part: str, t: torch.Tensor) -> Iterator[Tuple[str, torch.Tensor]]:
        if part in s.untie:
            for m in s.modalities:
                yield f"{name}.{m}", t.clone()  # separate storage: safetensors refuses shared tensors
        else:
            yield name, t

    def tensors():
        embed = reader.get("model.embed_tokens.weight")
        yield "embedding.word_embeddings.weight", fit_vocab(embed, s.padded_vocab(1))
        for i in range(s.num_layers):
            for ours, part, theirs in layer_map(s):
                t = torch.cat([reader.get(f"model.layers.{i}.{n}") for n in theirs])
                yield from per_modality(f"layers.{i}.{ours}", part, t)
        norm = reader.get("model.norm.weight")
        if s.untie_final_norm:
            for m in s.modalities:
                yield f"head.final_norm.weight.{m}", norm.clone()
        else:
            yield "head.final_norm.weight", norm
        if not s.tie_embeddings:
            yield "head.output_layer.weight", fit_vocab(reader.get("lm_head.weight"), s.padded_vocab(1))

    write_universal(out, cfg, tensors(), {"step": 0, "has_optimizer": False, "vocab_rows": s.padded_vocab(1),
                                          "vocab_size": s.vocab_size, "source": os.path.abspath(hf_dir)},
                    {"step": 0})
    return s
