"""The model settings a checkpoint records, and the differences that forbid resuming it into a run.

A checkpoint's tensors mean something only for the model that wrote them. Some differences make
DeepSpeed's strict load fail with a shape error after the process groups exist; others load silently
and train another model: fewer layers through the universal loader (it fills what the run has),
modalities in another order (every modality's weights land on another modality's tokens), post- vs
pre-norm, another RoPE, norm epsilon or continuous-image spec. So every resume compares the
architecture settings (RECORDED, resolved: `num_kv_heads: null` is recorded as the number it means) with
the run's and refuses any difference, by config key, before any process group.

SHARD_SHAPED settings matter only to DeepSpeed checkpoints (the padding of the vocabulary rows, which the
universal loader re-pads). Everything else in ModelSettings may change on resume, for the reason given
in NOT_RECORDED (tests/integration/test_resume.py keeps the three lists covering every field).
"""
from __future__ import annotations

import dataclasses
import json
from typing import List

from ..config import Config

RECORDED = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_hidden_size", "vocab_size", "modalities",
            "untie", "norm_placement", "qk_norm", "qkv_bias", "untie_final_norm", "tie_embeddings", "norm_eps",
            "rope_theta", "rope_scaling", "continuous", "diffusion_timesteps", "diffusion_prediction")
SHARD_SHAPED = ("vocab_multiple",)
NOT_RECORDED = {
    "attention_dropout": "a training choice; no weight depends on it",
    "hidden_dropout": "a training choice; no weight depends on it",
    "init_std": "initialisation only; a resumed model is loaded, not initialised",
    "scale_output_by_depth": "initialisation only",
    "modality_copies": "initialisation only",
    "seed": "the random streams are restored from the checkpoint",
    "document_masking": "which tokens attend to which: a data choice, the weights are the same",
    "diffusion_loss_weight": "the weighting of the losses, not the model",
    "params_dtype": "the training precision (DeepSpeed converts on load)",
    "perform_initialization": "a construction flag",
}
CONFIG_KEYS = {"vocab_multiple": "model.make_vocab_size_divisible_by", "diffusion_timesteps": "diffusion.timesteps",
               "diffusion_prediction": "diffusion.prediction",
               "continuous": "model.continuous (and its order in model.modalities)"}


def _plain(value):
    """JSON's view of a settings value (tuples -> lists, dataclasses -> dicts, sets -> sorted lists)."""
    if isinstance(value, frozenset):
        value = sorted(value)
    elif dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif isinstance(value, tuple):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return json.loads(json.dumps(value))


def model_record(cfg: Config) -> dict:
    """The settings a checkpoint of `cfg`'s model records (JSON values)."""
    from ..model.settings import ModelSettings
    s = ModelSettings.from_config(cfg)
    return {name: _plain(getattr(s, name)) for name in RECORDED + SHARD_SHAPED}


def model_differences(saved: dict, now: dict, deepspeed: bool) -> List[str]:
    """'<config key>: the checkpoint has X, this run Y' for every recorded setting that differs
    (SHARD_SHAPED ones only for a DeepSpeed checkpoint; a setting the checkpoint predates is not compared)."""
    out = []
    for name in RECORDED + (SHARD_SHAPED if deepspeed else ()):
        if name in saved and _filled(name, saved[name]) != now[name]:
            out.append(f"{CONFIG_KEYS.get(name, 'model.' + name)}: the checkpoint has {saved[name]}, this run "
                       f"{now[name]}")
    return out


def _filled(name: str, value):
    """A recorded value as this version records it: a continuous modality recorded before one of its settings
    existed (position_embedding) had that setting's default."""
    if name != "continuous" or not isinstance(value, list):
        return value
    from ..model.settings import ContinuousSpec
    defaults = {f.name: f.default for f in dataclasses.fields(ContinuousSpec) if f.default is not dataclasses.MISSING}
    return [{**defaults, **v} if isinstance(v, dict) else v for v in value]


def model_problem(where: str, saved: dict, cfg: Config, deepspeed: bool) -> str:
    """'' when the checkpoint `where` (its recorded settings `saved`) fits `cfg`'s model, else the refusal."""
    diffs = model_differences(saved, model_record(cfg), deepspeed)
    if not diffs:
        return ""
    return (f"{where} was written for another model:\n  - " + "\n  - ".join(diffs) + "\nA checkpoint resumes only "
            "into the model it was written for: set these keys as the checkpoint has them, or train the new model "
            "in a new run.output_dir")
