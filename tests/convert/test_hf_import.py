"""Hugging Face -> MoT conversion (tiny random models, fp32; tolerance 1e-5 absolute on logits of order 1,
unless a test says bit-exact):
- Llama (GQA/MQA/MHA, RoPE theta, tied embeddings, Llama-3 RoPE scaling) and Qwen2 (q/k/v biases, tied,
  attention shared or per modality) convert, and the MoT logits equal transformers' for any modality
  assignment, on TP=1 and TP=2 (2 gloo processes) and through the single-file export; both config.json
  forms (transformers 4: rope_theta/rope_scaling; 5: rope_parameters) convert identically; HF's random init
  leaves biases at 0 and norms at 1, so they are redrawn to make a mis-mapping visible;
- refusals: another family or architecture, every unsupported option (by name), a tensor the conversion
  would not use (the Qwen2-read-as-Llama case that used to convert silently and wrongly), a missing or
  misshaped tensor, an override contradicting config.json: one line, non-zero exit, nothing written;
- Llama-3 frequencies equal transformers' on random parameter sets (bit-exact)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import mot_parallel
from mot_parallel.config import load_config
from mot_parallel.convert import ConversionError, Universal, export_universal, hf_to_universal
from mot_parallel.testing import run_distributed

transformers = pytest.importorskip("transformers")
from hf_utils import LLAMA3, S, V, hf_model, inputs, rope_kwargs, tool  # noqa: E402


def _tp2_logits(universal):
    """The converted model on TP=2: vocab-parallel logits gathered, back in sequence order."""
    import torch.distributed as dist

    from mot_parallel.config import validate
    from mot_parallel.convert import load_universal_into_model
    from mot_parallel.config import ParallelLayout
    from mot_parallel.distributed import ParallelTopology
    from mot_parallel.model import ModelSettings, MoTModel
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    cfg = load_config(os.path.join(universal, "config.yaml"), ["parallel.tensor_parallel=2"])
    validate(cfg, 2)
    model = MoTModel(ModelSettings.from_config(cfg), parallel=topo.context()).eval()
    load_universal_into_model(model, universal, topo.tp_group)
    tokens, mods = inputs()
    plan = model.build_plan(mods.t())
    with torch.no_grad():
        local = model(tokens.t(), plan)  # this rank's vocab shard of the logits, grouped order
    parts = [torch.empty_like(local) for _ in range(2)]
    dist.all_gather(parts, local, group=topo.tp_group)
    full = plan.to_sequence(torch.cat(parts, dim=-1))[:, :V]
    return full.view(S, 2, V).transpose(0, 1)


HF_CASES = {  # name: (HF model keywords, extra hf-to-mot overrides, through the tool (else in-process), TP=2)
    "llama-gqa2-theta1e4": (dict(kv=2), [], True, True),
    "llama-mqa-theta5e5-tied": (dict(kv=1, theta=5e5, tie=True), [], False, False),  # TP=2 needs KV % 2 == 0
    "llama-mha-theta1e6": (dict(kv=4, theta=1e6), [], False, True),
    "llama3-rope-scaling": (dict(kv=2, rope=LLAMA3), [], False, True),
    "qwen2-gqa2": (dict(family="qwen2", kv=2), [], True, True),
    "qwen2-tied-shared-attention": (dict(family="qwen2", kv=2, tie=True), ["model.untie=[ffn,norms]"], False, False),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c == "llama-mha-theta1e6" else c
                                  for c in HF_CASES])  # MHA: GQA's path with kv = heads
def test_hf_to_mot_matches_hf_logits(case, tmp_path):
    kwargs, overrides, through_tool, tp2 = HF_CASES[case]
    hf = hf_model(tmp_path / "hf", **kwargs)
    if through_tool:
        out = tool("hf-to-mot", "--hf", tmp_path / "hf", "--out", tmp_path / "mot", "--modalities", "text", "image",
                   "speech", *overrides)
        assert out.returncode == 0, out.stderr[-3000:]
    else:
        hf_to_universal(str(tmp_path / "hf"), str(tmp_path / "mot"), ["text", "image", "speech"], overrides=overrides)
    tokens, mods = inputs()
    with torch.no_grad():
        ref = hf(tokens).logits
    model = mot_parallel.load_pretrained(str(tmp_path / "mot"))            # the documented one-liner
    for assignment in (mods, torch.zeros_like(mods), torch.full_like(mods, 2)):  # any assignment
        assert (model(tokens, assignment) - ref).abs().max() <= 1e-5
    m = Universal(str(tmp_path / "mot")).config.model
    assert m.max_seq_len == 64 and m.qkv_bias == (kwargs.get("family") == "qwen2")
    assert m.rope_scaling.rope_type == ("llama3" if kwargs.get("rope") else "default")
    if tp2:
        for rank_logits in run_distributed(_tp2_logits, 2, args=(str(tmp_path / "mot"),), timeout=300):
            assert (rank_logits - ref).abs().max() <= 1e-5
    if through_tool:
        assert tool("export", "--universal", tmp_path / "mot", "--out", tmp_path / "exp").returncode == 0
    else:
        export_universal(str(tmp_path / "mot"), str(tmp_path / "exp"))
    assert (mot_parallel.load_pretrained(str(tmp_path / "exp"))(tokens, mods) - ref).abs().max() <= 1e-5


def _legacy(config_json):
    """The transformers-4 form of a transformers-5 config.json."""
    cfg = json.load(open(config_json))
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    json.dump(cfg, open(config_json, "w"))


@pytest.mark.parametrize("family,rope", [("llama", LLAMA3), ("qwen2", None)])
def test_both_config_json_forms_convert_identically(family, rope, tmp_path):
    hf_model(tmp_path / "hf", family=family, theta=5e5, rope=rope)
    hf_to_universal(str(tmp_path / "hf"), str(tmp_path / "a"), ["text", "image"])
    _legacy(tmp_path / "hf" / "config.json")
    hf_to_universal(str(tmp_path / "hf"), str(tmp_path / "b"), ["text", "image"])
    a, b = Universal(str(tmp_path / "a")), Universal(str(tmp_path / "b"))
    assert a.config == b.config and a.config.model.rope_theta == 5e5 and set(a.index) == set(b.index)
    assert all(torch.equal(a.get(k), b.get(k)) for k in a.index)


def test_hf_to_mot_rejects_unsupported(tmp_path):
    hf_model(tmp_path / "hf")
    cfg = json.load(open(tmp_path / "hf" / "config.json"))
    cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0}
    cfg["mlp_bias"] = True
    json.dump(cfg, open(tmp_path / "hf" / "config.json", "w"))
    out = tool("hf-to-mot", "--hf", tmp_path / "hf", "--out", tmp_path / "mot", "--modalities", "text")
    assert out.returncode != 0 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "'yarn'" in out.stderr and "llama3" in out.stderr and "longrope" in out.stderr and "mlp_bias" in out.stderr
    assert not (tmp_path / "mot").exists()


REFUSED_CONFIGS = [  # (family, config.json changes, words the one-line error must contain)
    ("llama", {"model_type": "mistral"}, ["'mistral'", "llama (LlamaForCausalLM)", "qwen2 (Qwen2ForCausalLM)"]),
    ("llama", {"architectures": ["LlamaForSequenceClassification"]}, ["LlamaForSequenceClassification"]),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16}, ["use_sliding_window"]),
    ("qwen2", {"layer_types": ["full_attention", "sliding_attention"]}, ["sliding_attention"]),
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, ["'linear'"]),
    ("llama", {"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
     ["'dynamic'"]),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     ["llama3", "low_freq_factor"]),
    ("llama", {"partial_rotary_factor": 0.5}, ["partial_rotary_factor"]),
    ("llama", {"attention_bias": True}, ["attention_bias", "o_proj"]),
    ("llama", {"head_dim": 32}, ["head_dim=32"]),
    ("qwen2", {"hidden_act": "gelu"}, ["hidden_act"]),
    ("llama", {"quantization_config": {"quant_method": "gptq"}}, ["quantization_config"]),
    ("llama", {"hidden_size": None}, []),
]


def _edit_config(hf_dir, changes):
    cfg = json.load(open(hf_dir / "config.json"))
    for k, v in changes.items():
        if v is None and k == "hidden_size":
            del cfg[k]
        else:
            cfg[k] = v
    json.dump(cfg, open(hf_dir / "config.json", "w"))


def _refused(hf_dir, out, words, overrides=()):
    with pytest.raises(ConversionError) as e:
        hf_to_universal(str(hf_dir), str(out), ["text", "image"], overrides=list(overrides))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not out.exists()
    return msg


@pytest.mark.parametrize("family,changes,words", REFUSED_CONFIGS,
                         ids=[f"{f}-{'-'.join(c)}" for f, c, _ in REFUSED_CONFIGS])
def test_refuses_unsupported_configs_by_name(family, changes, words, tmp_path):
    hf_model(tmp_path / "hf", family=family)
    _edit_config(tmp_path / "hf", changes)
    _refused(tmp_path / "hf", tmp_path / "mot", words or ["hidden_size"])


def test_qwen2_read_as_llama_is_refused_not_silently_wrong(tmp_path):
    """The old failure: a Qwen2 checkpoint converted as a Llama dropped the q/k/v biases (logits off by ~1)."""
    hf_model(tmp_path / "hf", family="qwen2")
    _edit_config(tmp_path / "hf", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    _refused(tmp_path / "hf", tmp_path / "mot", ["would not use", "model.layers.0.self_attn.q_proj.bias"])


def _edit_tensors(hf_dir, edit):
    path = hf_dir / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_refuses_unused_missing_and_misshaped_tensors(tmp_path):
    hf = tmp_path / "hf"
    hf_model(hf, tie=True)
    inv_freq = "model.layers.0.self_attn.rotary_emb.inv_freq"  # old checkpoints carry these buffers
    _edit_tensors(hf, lambda t: t.update({inv_freq: 1e4 ** -(torch.arange(0, 16, 2).float() / 16),
                                          "lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    hf_to_universal(str(hf), str(tmp_path / "ok"), ["text"])  # equal to what we compute: used, in effect
    _edit_tensors(hf, lambda t: t.update({inv_freq: t[inv_freq] * 2}))
    _refused(hf, tmp_path / "mot", ["would not use", inv_freq])
    _edit_tensors(hf, lambda t: (t.pop(inv_freq), t.update({"lm_head.weight": t["lm_head.weight"] + 1})))
    _refused(hf, tmp_path / "mot", ["would not use", "lm_head.weight"])  # tied, yet a different head
    _edit_tensors(hf, lambda t: (t.pop("lm_head.weight"), t.pop("model.layers.1.mlp.up_proj.weight")))
    _refused(hf, tmp_path / "mot", ["missing tensors: model.layers.1.mlp.up_proj.weight"])
    _edit_tensors(hf, lambda t: t.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(95, 64)}))
    _refused(hf, tmp_path / "mot", ["model.layers.1.mlp.up_proj.weight has shape [95, 64]", "[96, 64]"])


def test_refuses_overrides_that_contradict_the_checkpoint(tmp_path):
    hf_model(tmp_path / "hf", family="qwen2")
    _refused(tmp_path / "hf", tmp_path / "mot", ["model.qkv_bias=False"], ["model.qkv_bias=false"])
    _refused(tmp_path / "hf", tmp_path / "mot", ["model.norm_placement"], ["model.norm_placement=post"])
    hf_to_universal(str(tmp_path / "hf"), str(tmp_path / "mot"), ["text"], overrides=["model.max_seq_len=32"])


def test_llama3_frequencies_equal_transformers():
    """Random parameter sets, including factor 1, a one-token original context and very large theta."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mot_parallel.model.rope import RopeScaling, inverse_frequencies
    g = torch.Generator().manual_seed(0)
    bands = set()
    for trial in range(60):
        d = 2 * int(torch.randint(1, 65, (1,), generator=g))
        theta = float(10 ** (1 + 6 * torch.rand(1, generator=g)))
        low = float(0.5 + 2 * torch.rand(1, generator=g))
        high = low + float(0.1 + 8 * torch.rand(1, generator=g))
        params = {"rope_type": "llama3", "rope_theta": theta, "factor": [1.0, 8.0, 32.0][trial % 3],
                  "low_freq_factor": low, "high_freq_factor": high,
                  "original_max_position_embeddings": [1, 64, 8192][(trial // 3) % 3]}
        cfg = transformers.LlamaConfig(hidden_size=d * 2, num_attention_heads=2, **rope_kwargs(theta, params))
        ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        scaling = RopeScaling(params["factor"], low, high, params["original_max_position_embeddings"])
        ours = inverse_frequencies(d, theta, scaling)
        assert torch.equal(ours, ref.float()), (trial, params)
        plain = inverse_frequencies(d, theta)
        bands |= {"kept" if a == b else "slowed" if torch.isclose(a, b / params["factor"]) else "blended"
                  for a, b in zip(ours, plain)}
    assert bands == {"kept", "slowed", "blended"}


def test_rope_scaling_config_is_validated():
    from mot_parallel.config import ConfigError, validate
    with pytest.raises(ConfigError, match="model.rope_scaling.*low_freq_factor < high_freq_factor"):
        validate(load_config(None, ["model.rope_scaling.rope_type=llama3", "model.rope_scaling.low_freq_factor=4"]))
    with pytest.raises(ConfigError, match="model.rope_scaling.rope_type: 'yarn' is not one of"):
        load_config(None, ["model.rope_scaling.rope_type=yarn"])
