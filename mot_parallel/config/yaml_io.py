"""Build a `Config` from defaults < YAML files (`base:` inheritance) < dotted `key=value` overrides.

Unknown keys and wrong types raise `ConfigError` naming the dotted key (and the closest valid key);
nothing here touches torch.distributed, so a bad config fails before any process group exists.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from .schema import Config


class ConfigError(ValueError):
    """A configuration problem; the message names the key/value and how to fix it."""


# ---------------------------------------------------------------------------- YAML + overrides (plain dicts)

def _read_yaml(path: str, chain: tuple = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in chain:
        raise ConfigError(f"circular 'base:' chain: {' -> '.join(chain + (path,))}")
    where = f" (the 'base:' of {chain[-1]})" if chain else ""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a directory, not a config file{where}; give a YAML file "
                          "(e.g. configs/demo_cpu.yaml)")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        data = yaml.safe_load(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror}){where}") from None
    except UnicodeDecodeError as e:
        line = text_line(e.object, e.start)
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}){where}; "
                          "save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path string, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    return _merge(_read_yaml(base_path, chain + (path,)), data)


def text_line(data: bytes, offset: int) -> int:
    """1-based line number of byte `offset` in `data` (to name where undecodable bytes are)."""
    return data.count(b"\n", 0, offset) + 1


def _merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge; `top` wins; lists are replaced, not concatenated; an explicitly empty
    mapping (`key: {}`) replaces the inherited one, so a child config can clear a free-form dict."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[List[str], Any]:
    """'train.optimizer.lr=1e-3' -> (['train', 'optimizer', 'lr'], '1e-3' parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value (e.g. train.steps=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(tree: Dict[str, Any], path: List[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


# ---------------------------------------------------------------------------- dicts -> dataclasses

def _is_free_form(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, Dict)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert `value` to the annotated type `tp`; raise ConfigError naming `key`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is typing.Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            sugg = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}{sugg}")
        return value
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} (YAML list or key=[a,b])")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if args and args[1] is not Any:
            return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def all_keys(cls: type = Config, prefix: str = "") -> List[str]:
    """Every dotted leaf key of a config dataclass (sections themselves excluded)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += all_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(key: str, valid_here: Sequence[str]) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    local = difflib.get_close_matches(leaf, valid_here, n=1, cutoff=0.6)
    if local:
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        return ConfigError(f"unknown config key {key!r}; did you mean {parent + local[0]!r}?")
    anywhere = [k for k in all_keys() if k.rsplit(".", 1)[-1] == leaf]
    anywhere = anywhere or difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.6)
    sugg = f"; did you mean {anywhere[0]!r}?" if anywhere else f"; valid keys here: {', '.join(valid_here)}"
    return ConfigError(f"unknown config key {key!r}{sugg}")


def from_dict(cls: type, data: Dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, strictly: unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            raise _unknown_key(f"{prefix}{k}", names)
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if data[name] is None:
                continue
            kwargs[name] = from_dict(tp, data[name], key + ".")
        else:
            kwargs[name] = _coerce(data[name], tp, key)
    return cls(**kwargs)


def to_dict(obj: Any) -> Dict[str, Any]:
    return dataclasses.asdict(obj)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults < YAML at `path` (following `base:`) < `overrides` ('a.b=c', applied in order)."""
    tree = _read_yaml(path) if path else {}
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(tree, key_path, value)
    return from_dict(Config, tree)


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_config_or_exit(path: Optional[str], overrides: Sequence[str] = ()) -> Config:
    """For scripts: load_config, or exit with 'error: <message>' (the message names the key and the fix)."""
    import sys
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        sys.exit(f"error: {e}")
