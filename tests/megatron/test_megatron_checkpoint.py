"""Universal checkpoint <-> MoTGPTModel without hand mapping, on CPU (gloo, fp32):
- a universal checkpoint of our MoTModel (3 modalities, independent per-modality weights, QK-norm, GQA,
  padded vocabulary, perturbed norms) builds its MoTGPTModel from `megatron_setup` and loads with
  `load_into_megatron` at TP=1 and TP=2: logits equal our model's (<= 1e-5 relative);
- `tools/convert_checkpoint.py to-megatron` writes Megatron-named safetensors + megatron.json: at TP=1
  plain `load_state_dict` (strict) takes it, at TP=2 `load_into_megatron`; same logits;
- `megatron_to_universal` from the TP=2 model gives back the original universal tensors exactly;
- mismatches (modality order, a per-modality final norm) are refused with the field named."""
import os
import subprocess
import sys

import pytest
import torch

from mot_parallel.outputs import MARKER
from mot_parallel.testing import run_distributed

pytest.importorskip("megatron.core")

MODS = ("text", "image", "speech")
S, B = 16, 2
OVERRIDES = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2",
             "model.ffn_hidden_size=96", "model.vocab_size=100", "model.make_vocab_size_divisible_by=64",
             f"model.max_seq_len={S}", f"model.modalities=[{','.join(MODS)}]", "model.qk_norm=true", "train.seed=5"]


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 100, (B, S), generator=g), torch.randint(0, 3, (B, S), generator=g)


def _write_universal(path):
    """Our MoTModel as a universal checkpoint, and its logits [b, s, V_pad] in sequence order."""
    from mot_parallel.config import load_config
    from mot_parallel.convert.universal import write_universal
    from mot_parallel.model import MoTModel
    from mot_parallel.model.settings import ModelSettings
    cfg = load_config(None, OVERRIDES)
    s = ModelSettings.from_config(cfg)
    model = MoTModel(s)
    with torch.no_grad():  # norms away from 1, so a misplaced norm weight shows in the logits
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.2)
    write_universal(path, cfg, model.named_parameters(), {"step": 3, "has_optimizer": False,
                                                          "vocab_rows": s.padded_vocab(1), "vocab_size": 100},
                    {"step": 3})
    ids, mods = _batch()
    plan = model.build_plan(mods.t())
    with torch.no_grad():
        logits = plan.to_sequence(model(ids.t(), plan)).view(S, B, -1).transpose(0, 1)
    return logits


def _build(tp, setup, modalities=None):
    from megatron.core.transformer import TransformerConfig

    from mot_parallel.megatron import MoTGPTModel, get_mot_layer_spec
    options = setup.options if modalities is None else type(setup.options)(**{**setup.options.__dict__,
                                                                              "modalities": modalities})
    cfg = TransformerConfig(**setup.config_kwargs(), tensor_model_parallel_size=tp, use_cpu_initialization=True)
    return MoTGPTModel(cfg, get_mot_layer_spec(options), **setup.model, mot=options)


def _logits(model, tp):
    from megatron.core import parallel_state as ps
    ids, mods = _batch()
    with torch.no_grad():
        out = model(ids, modality_ids=mods)
    if tp == 1:
        return out
    parts = [torch.empty_like(out) for _ in range(tp)]
    torch.distributed.all_gather(parts, out.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def _megatron_body(tp, universal, megatron_dir, out):
    from megatron.core import parallel_state as ps
    from safetensors.torch import load_file

    from mot_parallel.megatron import load_into_megatron, megatron_setup, megatron_to_universal
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    setup = megatron_setup(universal)
    assert megatron_setup(megatron_dir) == setup
    model = _build(tp, setup)
    results = {}
    load_into_megatron(model, universal)
    results["from_universal"] = _logits(model, tp)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    if tp == 1:
        model.load_state_dict(load_file(os.path.join(megatron_dir, "model.safetensors")), strict=True)
    else:
        load_into_megatron(model, megatron_dir)
    results["from_megatron_dir"] = _logits(model, tp)
    if out:
        megatron_to_universal(model, out, vocab_size=setup.vocab_size, step=3)
    try:
        load_into_megatron(_build(tp, setup, modalities=tuple(reversed(MODS))), universal)
        results["mismatch"] = None
    except ValueError as e:
        results["mismatch"] = str(e)
    return results


def test_universal_to_megatron_and_back(tmp_path):
    universal, megatron_dir, back = str(tmp_path / "u"), str(tmp_path / "m"), str(tmp_path / "back")
    ref = _write_universal(universal)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = subprocess.run([sys.executable, os.path.join(root, "tools", "convert_checkpoint.py"), "to-megatron",
                          "--universal", universal, "--out", megatron_dir], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": root})
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(os.listdir(megatron_dir)) == [MARKER, "megatron.json", "model.safetensors"]  # the mark: ours
    results = run_distributed(_megatron_body, 1, args=(1, universal, megatron_dir, None), timeout=300)
    results += run_distributed(_megatron_body, 2, args=(2, universal, megatron_dir, back), timeout=300)
    for r in results:
        for key in ("from_universal", "from_megatron_dir"):
            err = ((r[key] - ref).abs().max() / ref.abs().max()).item()
            assert err <= 1e-5, (key, err)
        assert r["mismatch"] and "MoTOptions.modalities" in r["mismatch"]
    from mot_parallel.convert import Universal
    a, b = Universal(universal), Universal(back)
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
        assert torch.equal(a.get(n), b.get(n)), n
    assert b.meta["vocab_size"] == 100 and b.config.model.modalities == list(MODS) and b.config.model.qk_norm


def test_per_modality_final_norm_has_no_megatron_counterpart():
    from mot_parallel.config import ConfigError, load_config
    from mot_parallel.megatron.names import setup_from_config
    with pytest.raises(ConfigError, match="untie_final_norm"):
        setup_from_config(load_config(None, OVERRIDES + ["model.untie_final_norm=true"]), 128)


def test_names_map_both_ways():
    from mot_parallel.megatron.names import canonical_name, megatron_name
    for canonical in ("embedding.word_embeddings.weight", "layers.5.self_attention.linear_qkv.weight.image",
                      "layers.0.attn_norm.weight.text", "head.final_norm.weight", "head.output_layer.weight"):
        name = megatron_name(canonical)
        local = name.replace("decoder.layers.5.", "decoder.layers.1.")  # a pipeline stage starting at layer 4
        numbers = [5, 6] if "layers.5" in canonical else [1]
        assert canonical_name(local if "layers.5" in canonical else name, numbers) == canonical
    with pytest.raises(KeyError, match="no universal-checkpoint counterpart"):
        canonical_name("embedding.position_embeddings.weight", [1])
