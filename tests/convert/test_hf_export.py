"""MoT -> Hugging Face (tools/convert_checkpoint.py to-hf): one modality's copy of an MoT with independent
copies, exported as a HF Llama (llama3 RoPE scaling, untied final norm) or Qwen2 (per-modality q/k/v
biases, tied embeddings, shared norms), loads with AutoModelForCausalLM and gives our logits on that
modality's tokens (1e-5 absolute, fp32), for every modality; HF -> MoT -> HF is the identity (bit-exact
tensors, same config); post-norm and QK-norm are refused by name, in one line, nothing written."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mot_parallel
from mot_parallel.convert import export_to_hf, hf_to_universal

transformers = pytest.importorskip("transformers")
from hf_utils import LLAMA3, hf_model, inputs, mot_universal, tool  # noqa: E402


EXPORT_CASES = {
    "llama-llama3-untied-final-norm": ["model.untie_final_norm=true", "model.rope_scaling.rope_type=llama3",
                                       "model.rope_scaling.original_max_position_embeddings=32"],
    "qwen2-tied-shared-norms": ["model.qkv_bias=true", "model.tie_embeddings=true", "model.untie=[attention,ffn]"],
}


@pytest.mark.parametrize("case", list(EXPORT_CASES))
def test_to_hf_exports_one_modalitys_copy(case, tmp_path):
    mot_universal(tmp_path / "u", EXPORT_CASES[case])
    ours = mot_parallel.load_pretrained(str(tmp_path / "u"))
    tokens, _ = inputs()
    logits = {}
    for i, m in enumerate(("text", "image", "speech")):
        if m == "image":  # through the tool once
            out = tool("to-hf", "--universal", tmp_path / "u", "--modality", m, "--out", tmp_path / m)
            assert out.returncode == 0, out.stderr[-2000:]
        else:
            export_to_hf(str(tmp_path / "u"), m, str(tmp_path / m))
        family = json.load(open(tmp_path / m / "config.json"))["model_type"]
        assert family == ("qwen2" if "qwen2" in case else "llama")
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / m)).eval()
        assert next(hf.parameters()).dtype == torch.float32
        with torch.no_grad():
            logits[m] = hf(tokens).logits
        assert (ours(tokens, torch.full_like(tokens, i)) - logits[m]).abs().max() <= 1e-5, m
    assert (logits["text"] - logits["image"]).abs().max() > 0.1  # the copies differ: the test can fail


def test_hf_to_mot_to_hf_is_the_identity(tmp_path):
    hf_model(tmp_path / "hf", family="qwen2", tie=True, rope=LLAMA3)
    hf_to_universal(str(tmp_path / "hf"), str(tmp_path / "u"), ["text", "image"])
    export_to_hf(str(tmp_path / "u"), "image", str(tmp_path / "back"))
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (transformers.AutoConfig.from_pretrained(str(tmp_path / d)) for d in ("hf", "back"))
    keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")
    assert all(getattr(ca, k) == getattr(cb, k) for k in keys)
    assert getattr(ca, "rope_parameters", None) == getattr(cb, "rope_parameters", None)
    with safe_open(tmp_path / "back" / "model.safetensors", "pt") as st:
        assert st.metadata() == {"format": "pt"}


@pytest.mark.parametrize("overrides,words", [(["model.norm_placement=post"], ["norm_placement", "pre-norm"]),
                                             (["model.qk_norm=true"], ["qk_norm", "QK-norm"])])
def test_to_hf_refuses_what_hf_cannot_express(overrides, words, tmp_path):
    mot_universal(tmp_path / "u", overrides)
    out = tool("to-hf", "--universal", tmp_path / "u", "--modality", "audio", "--out", tmp_path / "o")
    assert out.returncode != 0 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert all(w in out.stderr for w in words + ["'audio'"]), out.stderr
    assert not (tmp_path / "o").exists()
