"""One modality's copy of an MoT checkpoint -> a standard Hugging Face checkpoint (the way back).

    python tools/convert_checkpoint.py to-hf --universal u --modality text --out hf_text [--dtype bf16]
    model = transformers.AutoModelForCausalLM.from_pretrained("hf_text")

A token of modality m passes through m's copy of every untied part, the shared parts, m's final norm (or
the shared one) and the shared embedding and head; the dense model assembled from exactly those weights
therefore computes what the MoT computes on a sequence of m's tokens alone (on a mixed sequence m's tokens
attend to other modalities' keys and values, which no dense model reproduces). Uses: keep the text model
after MoT training, or hand one modality's tower to HF tooling (LMFusion-style).

    <out>/config.json          Qwen2ForCausalLM when model.qkv_bias (Qwen2 has q/k/v biases and no o_proj
                               bias), LlamaForCausalLM otherwise; written in the rope_theta/rope_scaling form
                               that transformers 4.x and 5.x both read
    <out>/model.safetensors    HF tensor names (hf.py's table, reversed), the true vocabulary rows only

Refused by name (HF Llama/Qwen2 cannot express them): post-norm placement, QK-norm.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import Config, load_config
from ..model.settings import DTYPES, ModelSettings
from .hf import FAMILIES, ConversionError, hf_shapes, layer_map
from .canonical_names import fit_vocab
from ..outputs import HF
from .universal import Universal, fresh_temp_dir, is_universal, move_into_place

HF_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _source(path: str) -> Tuple[Config, Callable[[str], torch.Tensor]]:
    """(config, canonical name -> tensor) of a universal checkpoint or a single-file export."""
    if is_universal(path):
        uni = Universal(path)
        return uni.config, uni.get
    single = os.path.join(path, "model.safetensors")
    if not (os.path.isfile(single) and os.path.isfile(os.path.join(path, "config.yaml"))):
        raise ConversionError(f"{path}: neither a universal checkpoint nor an export; convert a training "
                              "checkpoint first with tools/convert_checkpoint.py to-universal")
    st = safe_open(single, "pt")
    return load_config(os.path.join(path, "config.yaml")), st.get_tensor


def hf_config(s: ModelSettings, max_seq_len: int, dtype: str = "fp32") -> Dict:
    """config.json of the dense HF model one modality's copy forms."""
    family = "qwen2" if s.qkv_bias else "llama"
    cfg = {"architectures": [FAMILIES[family]], "model_type": family, "hidden_size": s.hidden_size,
           "intermediate_size": s.ffn_hidden_size, "num_hidden_layers": s.num_layers,
           "num_attention_heads": s.num_heads, "num_key_value_heads": s.num_kv_heads, "head_dim": s.head_dim,
           "vocab_size": s.vocab_size, "max_position_embeddings": max_seq_len, "rms_norm_eps": s.norm_eps,
           "hidden_act": "silu", "rope_theta": s.rope_theta, "rope_scaling": None,
           "tie_word_embeddings": s.tie_embeddings, "attention_dropout": s.attention_dropout,
           "torch_dtype": HF_DTYPE_NAMES[dtype]}
    if s.rope_scaling is not None:
        r = s.rope_scaling
        cfg["rope_scaling"] = {"rope_type": "llama3", "factor": r.factor, "low_freq_factor": r.low_freq_factor,
                               "high_freq_factor": r.high_freq_factor,
                               "original_max_position_embeddings": r.original_max_position_embeddings}
    if family == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    else:
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=s.num_layers)
    return cfg


def _check(s: ModelSettings, modality: str, where: str) -> None:
    problems = []
    if modality not in s.modalities:
        problems.append(f"no modality {modality!r} (the checkpoint has {list(s.modalities)})")
    if s.norm_placement != "pre":
        problems.append(f"model.norm_placement={s.norm_placement!r}: HF Llama/Qwen2 are pre-norm")
    if s.qk_norm:
        problems.append("model.qk_norm=true: HF Llama/Qwen2 have no QK-norm")
    if s.spec(modality) is not None:
        problems.append(f"{modality!r} is a continuous modality (patches and a diffusion head): a causal LM cannot "
                        "express it; export a discrete modality's copy (e.g. text)")
    if problems:
        raise ConversionError(f"cannot export {where} to Hugging Face: " + "; ".join(problems))


def hf_tensors(s: ModelSettings, get: Callable[[str], torch.Tensor], modality: str) -> Dict[str, torch.Tensor]:
    """HF name -> tensor: `modality`'s copy of every untied part, the shared parts, fused weights split."""
    def ours(name: str, untied: bool) -> torch.Tensor:
        return get(f"{name}.{modality}" if untied else name).float()
    shapes = hf_shapes(s)
    out = {"model.embed_tokens.weight": fit_vocab(get("embedding.word_embeddings.weight").float(), s.vocab_size),
           "model.norm.weight": ours("head.final_norm.weight", s.untie_final_norm)}
    if not s.tie_embeddings:
        out["lm_head.weight"] = fit_vocab(get("head.output_layer.weight").float(), s.vocab_size)
    for i in range(s.num_layers):
        for name, part, theirs in layer_map(s):
            names = [f"model.layers.{i}.{n}" for n in theirs]
            pieces = ours(f"layers.{i}.{name}", part in s.untie).split([shapes[n][0] for n in names])
            out.update(zip(names, pieces))
    return out


def export_to_hf(path: str, modality: str, out: str, dtype: str = "fp32") -> str:
    """Write `modality`'s copy of the checkpoint at `path` (universal or export) as a HF checkpoint."""
    cfg, get = _source(path)
    s = ModelSettings.from_config(cfg)
    _check(s, modality, path)
    tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in hf_tensors(s, get, modality).items()}
    tmp = fresh_temp_dir(out, HF)
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(hf_config(s, cfg.model.max_seq_len, dtype), f, indent=2)
    move_into_place(tmp, out)
    return out
