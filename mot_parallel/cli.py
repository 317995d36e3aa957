"""Small helpers shared by the command-line tools (tools/, launch/): argument types that refuse bad values
in argparse's own `error:` line, and `user_errors()`, which turns the project's input errors into one
`error: <message>` line and exit status 1 instead of a traceback.

Every tool's contract: bad input (a missing or unreadable file, a bad config, a corrupt corpus, an
out-of-range argument) prints one clear `error:` message naming the file or key and the fix, and exits
non-zero; tracebacks are for bugs (tests/test_cli_errors.py runs every tool on bad inputs).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator, Optional, Sequence, Tuple, Type


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not >= 0")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def existing_path(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: not found")
    return text


def input_errors() -> Tuple[Type[BaseException], ...]:
    """The project's error types for bad input, among the modules loaded so far (an error type whose module
    was never imported cannot have been raised, and importing it here would cost seconds)."""
    names = (("mot_parallel.config.yaml_io", "ConfigError"), ("mot_parallel.data.indexed", "DataError"),
             ("mot_parallel.training.checkpoint_files", "CheckpointError"))
    return tuple(getattr(sys.modules[m], n) for m, n in names if m in sys.modules)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """`with user_errors(): ...` exits with 'error: <message>' on a ConfigError, DataError or CheckpointError."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised below unless it is an input error
        if isinstance(e, input_errors()):
            sys.exit(f"error: {e}")
        raise


def checked_config(path: Optional[str], overrides: Sequence[str] = (), world: Optional[int] = None,
                   dp: Optional[int] = None):
    """Load and validate a config, or exit with 'error: <message>'. The world to validate for is `world`, or
    `dp` data-parallel ranks times the config's TP x PP, or none (no layout). Returns (cfg, layout or None)."""
    from .config import ConfigError, load_config, validate
    try:
        cfg = load_config(path, overrides)
        if world is None and dp is not None:
            world = dp * max(cfg.parallel.tensor_parallel, 1) * max(cfg.parallel.pipeline_parallel, 1)
        return cfg, validate(cfg, world)
    except ConfigError as e:
        sys.exit(f"error: {e}")
