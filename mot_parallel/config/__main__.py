"""Print every config key with its type, default and help, or a resolved config.

Usage:
    python -m mot_parallel.config                        # all keys, defaults, help
    python -m mot_parallel.config configs/demo_cpu.yaml [key=value ...]   # the resolved config as YAML
"""
import dataclasses
import sys
import typing

import yaml

from .yaml_io import ConfigError, load_config, to_dict
from .schema import Config
from .validate import validate


def _print_keys(cls=Config, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            print(f"\n[{prefix}{f.name}] {f.metadata['help']}")
            _print_keys(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            print(f"  {prefix}{f.name}: {name} = {default!r}\n      {f.metadata['help']}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "--help-keys"):
        _print_keys()
        sys.exit(0)
    try:
        cfg = load_config(args[0], args[1:])
        validate(cfg)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
