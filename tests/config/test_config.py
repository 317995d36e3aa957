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
    for path in glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.yaml")):
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
    # these used to pass validation and fail later (ZeroDivisionError, inside torch, or after the
    # process group existed)
    (["model.max_seq_len=1"], None, ["model.max_seq_len=1", "next-token target", "at least 2"]),
    (["train.optimizer.lr=.nan"], None, ["train.optimizer.lr=nan is not a finite number"]),
    (["train.optimizer.lr=.inf"], None, ["train.optimizer.lr=inf is not a finite number"]),
    (["train.grad_clip=.nan"], None, ["train.grad_clip=nan is not a finite number"]),
    (["train.optimizer.lr=1e999"], None, ["train.optimizer.lr=inf"]),
    (["data.demo_documents=0"], None, ["data.demo_documents=0 must be >= 1"]),
    (["data.path=''"], None, ["data.path is empty"]),
    (["train.seed=4294967296"], None, ["train.seed=4294967296", "2**32"]),
    (["model.hidden_size=100000000000000000000000"], None, ["model.hidden_size=", "beyond a 64-bit integer"]),
    (["model.vocab_size=3000000000"], None, ["model.vocab_size=3000000000", "int32"]),
    ([], 0, ["world size 0 must be >= 1"]),
    (["deepspeed={train_batch_size: 32}"], 2, ["deepspeed.train_batch_size=32 contradicts train.global_batch_size"]),
    (["deepspeed={gradient_accumulation_steps: 4}"], 1, ["deepspeed.gradient_accumulation_steps=4 contradicts"]),
    (["deepspeed={zero_optimization: {stage: 3}}"], None, ["deepspeed.zero_optimization.stage=3 contradicts "
                                                           "parallel.zero_stage (which gives 1)"]),
    (["deepspeed={optimizer: {params: {lr: 0.1}}}"], None, ["deepspeed.optimizer.params.lr=0.1 contradicts "
                                                            "train.optimizer.lr"]),
    (["deepspeed={gradient_clipping: 0.5}"], None, ["deepspeed.gradient_clipping=0.5 contradicts train.grad_clip"]),
    (["train.precision=fp32", "deepspeed={bf16: {enabled: true}}"], None, ["deepspeed.bf16.enabled=True contradicts "
                                                                           "train.precision"]),
    (["deepspeed={scheduler: {type: WarmupLR}}"], None, ["deepspeed.scheduler is ignored", "train.lr_schedule"]),
    (["deepspeed={zero_optimization: 2}"], None, ["deepspeed.zero_optimization must be a mapping"]),
    (["deepspeed={wall_clock_breakdown: .nan}"], None, ["deepspeed.wall_clock_breakdown=nan"]),
    (["model.hidden_size=1000000007", "model.num_heads=8"], None, ["model.hidden_size=1000000007"]),  # no stall
    # DeepSpeed's own config model, before any process group: a nested key it does not know, a wrong type, a
    # top-level key it would silently ignore
    (["deepspeed={zero_optimization: {stagee: 2}}"], None, ["deepspeed.zero_optimization.stagee: Extra inputs"]),
    (["deepspeed={zero_optimization: {offload_optimizer: {device: gpu}}}"], None,
     ["deepspeed.zero_optimization.offload_optimizer.device"]),
    (["deepspeed={zero_optimisation: {stage: 1}}"], None, ["deepspeed.zero_optimisation: not a key DeepSpeed",
                                                           "did you mean deepspeed.zero_optimization?"]),
    # an unset variable in a job script must not train on the demo corpus; it is asked for by name
    (["data.path="], None, ["data.path is empty", "data.path=demo"]),
    (["data.path=null"], None, ["data.path is empty"]),
    (["data.valid_path=demo"], None, ["data.valid_path=demo", "data.valid_fraction"]),
    (["model.max_seq_len=1000000000000"], None, ["model.max_seq_len=1000000000000 exceeds 4194304"]),
    (["diffusion.timestep_std=0"], None, ["diffusion.timestep_std=0.0 must be > 0"]),
    (["diffusion.timestep_sampling=lognormal"], None, ["did you mean 'logit_normal'"]),
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


def _float_keys():
    """Every float-valued config key (plain, Optional, list and mapping values), as an override setting NaN."""
    import typing
    from mot_parallel.config.schema import Config
    out = []

    def walk(cls, prefix):
        for name, tp in typing.get_type_hints(cls).items():
            key, args = prefix + name, typing.get_args(tp)
            if hasattr(tp, "__dataclass_fields__"):
                walk(tp, key + ".")
            elif tp is float or float in args and typing.get_origin(tp) is typing.Union:
                out.append((key, f"{key}=.nan"))
            elif typing.get_origin(tp) is list and args == (float,):
                out.append((key + "[0]", f"{key}=[.nan, 0.9]"))
            elif typing.get_origin(tp) is dict and args[-1:] == (float,):
                out.append((key + ".text", f"{key}={{text: .nan}}"))
    walk(Config, "")
    return out


@pytest.mark.parametrize("key,override", _float_keys(), ids=[k for k, _ in _float_keys()])
def test_every_float_key_refuses_nan(key, override):
    """NaN in any float key is named, once, before anything else runs (not only train.optimizer.lr)."""
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, [override]), world_size=1)
    assert f"{key}=nan is not a finite number" in str(e.value), str(e.value)
    root = key.split("[")[0].removesuffix(".text")
    assert len([line for line in str(e.value).splitlines() if root in line]) == 1, str(e.value)


def test_float_key_list_is_complete():
    keys = [k for k, _ in _float_keys()]
    assert {"train.optimizer.lr", "train.grad_clip", "model.rope_theta", "train.optimizer.betas[0]",
            "train.optimizer.modality_lr_scale.text", "logging.peak_tflops", "model.init.std"} <= set(keys)


def test_directory_and_non_utf8_configs(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config(str(tmp_path))
    (tmp_path / "latin1.yaml").write_bytes(b"model:\n  hidden_size: 64  # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_config(str(tmp_path / "latin1.yaml"))
    (tmp_path / "child.yaml").write_text(f"base: {tmp_path}\n")
    with pytest.raises(ConfigError, match="is a directory.*the 'base:' of"):
        load_config(str(tmp_path / "child.yaml"))
