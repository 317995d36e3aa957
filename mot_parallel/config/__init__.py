"""Configuration: typed dataclasses (schema.py), YAML + overrides (loader.py), validation (validate.py) and the
parallel layout derived from a validated config (layout.py)."""
from .parallel_layout import Coord, ParallelLayout
from .yaml_io import (ConfigError, all_keys, dump_config, from_dict, load_config, load_config_or_exit, parse_override,
                     to_dict)
from .schema import Config, ModelConfig, ParallelConfig, TrainConfig
from .validate import atomic_modalities, ffn_hidden_size, num_kv_heads, validate

__all__ = [
    "Config", "ConfigError", "Coord", "ModelConfig", "ParallelConfig", "ParallelLayout", "TrainConfig", "all_keys",
    "atomic_modalities", "dump_config", "ffn_hidden_size", "from_dict", "load_config", "load_config_or_exit",
    "num_kv_heads", "parse_override", "to_dict", "validate",
]
