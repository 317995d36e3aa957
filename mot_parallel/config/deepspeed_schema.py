"""The free-form `deepspeed:` section checked by DeepSpeed's own config model, before any process group.

DeepSpeed validates its blocks (zero_optimization, bf16, monitor, ...) with pydantic models that refuse unknown
keys and wrong types, but only inside `deepspeed.initialize`, after the process group exists; and it ignores an
unknown top-level key altogether. Here each top-level key of the section is run through `DeepSpeedConfig` alone
(so an error is attributed to its key), with DeepSpeed's logging silenced, and a top-level key that DeepSpeed's
config never reads is reported as unknown. Keys our config decides (batch sizes: deepspeed_checks.py) and
`checkpoint` (its own checks) are left to those checks. DeepSpeed is imported only when the section is non-empty.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
from typing import Any, Dict, List, Set

from .schema import Config

LEFT_OUT = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "checkpoint"}
_PROBE = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}


class _ReadKeys(dict):
    """A dict that records which keys were looked up (DeepSpeedConfig copies it shallowly: the record is shared)."""

    def __init__(self, data: Dict[str, Any], seen: Set[str]):
        super().__init__(data)
        self.seen = seen

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)

    def keys(self):
        return _Keys(self)


class _Keys:
    """`key in d.keys()` (DeepSpeed's idiom) records the key too."""

    def __init__(self, owner: _ReadKeys):
        self.owner = owner

    def __contains__(self, key):
        return key in self.owner

    def __iter__(self):
        return iter(dict.keys(self.owner))

    def __len__(self):
        return len(self.owner)


@contextlib.contextmanager
def _quiet():
    """DeepSpeed's logger writes to stdout (its import announces the accelerator): a filter, which its logger
    factory does not reset, keeps validation silent (a tool printing --json must print only JSON)."""
    logger, silence = logging.getLogger("DeepSpeed"), logging.Filter("not DeepSpeed")
    logger.addFilter(silence)
    try:
        yield
    finally:
        logger.removeFilter(silence)


def _refusals(where: str, error: Exception) -> List[str]:
    """One line per problem: pydantic's errors at their nested key, anything else as DeepSpeed said it."""
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic comes with DeepSpeed
        ValidationError = ()
    if isinstance(error, ValidationError):
        return [f"{'.'.join([where] + [str(p) for p in e['loc']])}: {e['msg']} (DeepSpeed's config model)"
                for e in error.errors()]
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    return [f"{where}: DeepSpeed refuses it ({said})"]


def deepspeed_schema_errors(cfg: Config) -> List[str]:
    """Problems DeepSpeed's config model finds in the `deepspeed:` section (each naming deepspeed.<key>)."""
    extra = {k: v for k, v in (cfg.deepspeed or {}).items() if k not in LEFT_OUT}
    if not extra:
        return []
    with _quiet():
        try:
            from deepspeed.runtime.config import DeepSpeedConfig
        except ImportError:  # DeepSpeed missing: the trainer will say so; nothing to check against here
            return []
        return _check(DeepSpeedConfig, extra)


def _check(DeepSpeedConfig, extra: Dict[str, Any]) -> List[str]:
    """Each key alone (so an error names its key), then the whole section; then keys never read."""
    errors, seen = [], set()
    for key, value in extra.items():
        try:
            DeepSpeedConfig(_ReadKeys(dict(_PROBE, **{key: value}), seen))
        except Exception as e:  # noqa: BLE001 - pydantic, assertion and value errors all mean "refused"
            errors += _refusals(f"deepspeed.{key}", e)
    if not errors:  # each key is fine alone: together (fp16 and bf16 both enabled, ...)?
        try:
            DeepSpeedConfig(dict(_PROBE, **extra))
        except Exception as e:  # noqa: BLE001
            errors += _refusals("deepspeed", e)
    for key in extra:
        if key not in seen:
            known = sorted(k for k in seen if isinstance(k, str))
            hint = difflib.get_close_matches(key, known, n=1)
            errors.append(f"deepspeed.{key}: not a key DeepSpeed's config reads (it would be ignored)"
                          + (f"; did you mean deepspeed.{hint[0]}?" if hint else ""))
    return errors
