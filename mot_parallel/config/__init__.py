"""Configuration: typed dataclasses (schema.py), YAML + overrides (loader.py), validation (validate.py)."""
from .loader import (ConfigError, all_keys, dump_config, from_dict, load_config, load_config_or_exit, parse_override,
                     to_dict)
from .schema import Config, ModelConfig, ParallelConfig, TrainConfig
from .validate import (Layout, atomic_modalities, ffn_hidden_size, num_kv_heads, padded_vocab_size, resolve_layout,
                       validate)

__all__ = [
    "Config", "ConfigError", "Layout", "ModelConfig", "ParallelConfig", "TrainConfig", "all_keys", "atomic_modalities",
    "dump_config", "ffn_hidden_size", "from_dict", "load_config", "load_config_or_exit", "num_kv_heads",
    "padded_vocab_size", "parse_override", "resolve_layout", "to_dict", "validate",
]
