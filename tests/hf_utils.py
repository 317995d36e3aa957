"""Helpers for the Hugging Face conversion tests: tiny random HF models, inputs, the tool, MoT checkpoints."""
import os
import subprocess
import sys

import torch

from mot_parallel.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = [sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py")]
V, S = 100, 24
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}  # head_dim 16, theta 1e4: frequencies in all three bands
MOT = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
       "model.ffn_hidden_size=96", f"model.vocab_size={V}", "model.max_seq_len=64", "model.norm_eps=1e-6",
       "model.modalities=[text,image,speech]"]


def perturb(model, seed):
    """Redraw biases and norm weights (HF initialises them to 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def rope_kwargs(theta, rope):
    """HF config keywords for RoPE in the installed transformers' form."""
    import transformers
    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **(rope or {})}}
    return {"rope_theta": theta, "rope_scaling": rope}


def hf_model(path, family="llama", kv=2, theta=1e4, tie=False, rope=None):
    """A tiny random HF Llama/Qwen2 (norms and biases drawn), saved as safetensors at `path`."""
    import transformers
    torch.manual_seed(0)
    config, model = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                     "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    cfg = config(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=kv, tie_word_embeddings=tie, max_position_embeddings=64, rms_norm_eps=1e-6,
                 **rope_kwargs(theta, rope))
    hf = model(cfg).eval()
    perturb(hf, 7)
    hf.save_pretrained(path, safe_serialization=True)
    return hf


def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (2, S), generator=g), torch.randint(0, 3, (2, S), generator=g)


def tool(*args):
    return subprocess.run(TOOL + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def mot_universal(path, overrides, seed=0):
    """A universal checkpoint of an MoT with independent copies (biases and norms drawn too)."""
    from mot_parallel.convert.canonical_names import canonical_names
    from mot_parallel.convert.universal import write_universal
    from mot_parallel.model import ModelSettings, MoTModel
    cfg = load_config(None, MOT + [f"train.seed={seed}"] + overrides)
    s = ModelSettings.from_config(cfg)
    model = MoTModel(s)
    perturb(model, seed + 1)
    names = canonical_names(model, False, s.num_layers)
    write_universal(str(path), cfg, ((names[k], p.detach()) for k, p in model.named_parameters()),
                    {"step": 0, "has_optimizer": False, "vocab_rows": s.padded_vocab(1), "vocab_size": V},
                    {"step": 0})
