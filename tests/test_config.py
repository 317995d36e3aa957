"""Config: precedence defaults < YAML (with base:) < CLI, strict keys, and malformed configs that must
fail before any distributed work with a message naming the offending key/value."""
import glob
import os

import pytest
import torch.distributed as dist
import yaml

from mot_parallel.config import ConfigError, all_keys, dump_config, load_config, validate


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_precedence_defaults_yaml_cli(tmp_path):
    _write(tmp_path / "base.yaml", {"model": {"hidden_size": 128, "num_layers": 6}, "train": {"steps": 7}})
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "model": {"num_layers": 2}})
    cfg = load_config(child, ["train.steps=3", "train.optimizer.lr=1e-3", "model.modalities=[text,image,speech]"])
    assert cfg.model.hidden_size == 128          # from base
    assert cfg.model.num_layers == 2             # child overrides base
    assert cfg.train.steps == 3                  # CLI overrides YAML
    assert cfg.train.optimizer.lr == 1e-3        # '1e-3' (a YAML string) coerced to float
    assert cfg.model.modalities == ["text", "image", "speech"]
    assert cfg.model.num_heads == 8              # default
    assert cfg.train.optimizer.betas == [0.9, 0.95]


def test_empty_mapping_clears_an_inherited_one(tmp_path):
    _write(tmp_path / "base.yaml", {"data": {"modality_token_ranges": {"image": [4, 100]}},
                                    "deepspeed": {"a": 1, "b": {"c": 2}}})
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "data": {"modality_token_ranges": {}},
                                             "deepspeed": {"b": {"d": 3}}})
    cfg = load_config(child)
    assert cfg.data.modality_token_ranges == {}
    assert cfg.deepspeed == {"a": 1, "b": {"c": 2, "d": 3}}  # non-empty mappings still merge


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.untie=[ffn]", "parallel.tensor_parallel=2"])
    dump_config(cfg, str(tmp_path / "run" / "config.yaml"))
    again = load_config(str(tmp_path / "run" / "config.yaml"))
    assert again == cfg
    assert not glob.glob(str(tmp_path / "run" / "*.tmp.*"))


def test_layout_derivation():
    cfg = load_config(None, ["parallel.tensor_parallel=2", "train.micro_batch_size=2", "train.global_batch_size=16"])
    layout = validate(cfg, world_size=8)
    assert (layout.tp, layout.pp, layout.dp, layout.grad_accum) == (2, 1, 4, 2)
    assert layout.global_batch_size == 16


def test_every_key_documented():
    keys = all_keys()
    assert "parallel.tensor_parallel" in keys and "train.optimizer.lr" in keys and "run.output_dir" in keys
    assert len(keys) > 50


def test_repo_configs_are_valid():
    for path in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")):
        cfg = load_config(path)
        validate(cfg)


MALFORMED = [
    # (overrides, world_size, words the message must contain)
    (["model.hiden_size=64"], None, ["model.hiden_size", "did you mean 'model.hidden_size'"]),
    (["parallel.tensor_paralel=2"], None, ["parallel.tensor_paralel", "parallel.tensor_parallel"]),
    (["zero_stage=2"], None, ["'zero_stage'", "parallel.zero_stage"]),
    (["model.hidden_size=abc"], None, ["model.hidden_size", "expected an integer", "abc"]),
    (["parallel.tensor_parallel=3"], None, ["model.num_heads=8", "parallel.tensor_parallel=3"]),
    (["model.num_kv_heads=2", "parallel.tensor_parallel=4"], None, ["model.num_kv_heads=2", "tensor_parallel=4"]),
    (["model.num_kv_heads=3"], None, ["model.num_kv_heads=3", "must divide"]),
    (["model.num_layers=6", "parallel.pipeline_parallel=4"], None, ["model.num_layers=6", "pipeline_parallel=4"]),
    (["parallel.tensor_parallel=2"], 3, ["world size 3", "tensor_parallel * parallel.pipeline_parallel = 2"]),
    (["parallel.pipeline_parallel=2", "parallel.zero_stage=2"], None,
     ["parallel.zero_stage=2", "pipeline", "zero_stage=1"]),
    (["parallel.zero_stage=5"], None, ["parallel.zero_stage=5"]),
    (["train.micro_batch_size=2", "train.global_batch_size=6"], 2, ["train.global_batch_size=6", "2 * 2"]),
    (["model.modalities=[text,image,text]"], None, ["duplicate modality name 'text'"]),
    (["model.modalities=[]"], None, ["model.modalities is empty"]),
    (["model.untie=[ffn,mlp]"], None, ["model.untie", "'mlp'"]),
    (["model.norm_placement=middle"], None, ["model.norm_placement", "'middle'", "pre"]),
    (["model.hidden_size=100", "model.num_heads=8"], None, ["model.hidden_size=100", "model.num_heads=8"]),
    (["train.optimizer.modality_lr_scale={audio: 2.0}"], None, ["modality_lr_scale", "'audio'"]),
    (["data.modality_token_ranges={image: [60000, 70000]}"], None, ["modality_token_ranges.image", "vocab_size"]),
    (["train.steps=0"], None, ["train.steps=0"]),
    (["parallel.sequence_parallel=true", "parallel.tensor_parallel=4", "model.max_seq_len=1022"], None,
     ["model.max_seq_len=1022", "sequence_parallel"]),
    (["model.attention_dropout=1.5"], None, ["model.attention_dropout=1.5"]),
    (["train.optimizer.betas=[0.9]"], None, ["train.optimizer.betas"]),
    (["train.steps"], None, ["train.steps", "section.key=value"]),
]


@pytest.mark.parametrize("overrides,world,words", MALFORMED, ids=[" ".join(m[0]) for m in MALFORMED])
def test_malformed_config_fails_clearly(overrides, world, words):
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, overrides), world_size=world)
    for w in words:
        assert w in str(e.value), f"message lacks {w!r}: {e.value}"
    assert not (dist.is_available() and dist.is_initialized()), "validation must not start torch.distributed"


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    a = _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="circular 'base:' chain"):
        load_config(a)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(tmp_path / "list.yaml"))
    (tmp_path / "sec.yaml").write_text("model: 3\n")
    with pytest.raises(ConfigError, match="model: expected a mapping"):
        load_config(str(tmp_path / "sec.yaml"))
