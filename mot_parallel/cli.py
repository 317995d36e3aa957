"""Small helpers shared by the command-line tools (tools/, launch/): argument types that refuse bad values
in argparse's own `error:` line, and `user_errors()`, which turns the project's input errors into one
`error: <message>` line and exit status 1 instead of a traceback.

Every tool's contract: bad input (a missing or unreadable file, a bad config, a corrupt corpus, an
out-of-range argument) prints one clear `error:` message naming the file or key and the fix, and exits
non-zero; tracebacks are for bugs (tests/tools/test_cli_errors.py runs every tool on bad inputs).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from typing import Iterator, Optional, Sequence, Tuple, Type


INT64_MAX = 2 ** 63 - 1


def _int(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def positive_int_list(text: str) -> list:
    """'8,32,128' -> [8, 32, 128]: positive integers, comma-separated, at least one."""
    items = [t.strip() for t in text.split(",")]
    if not all(re.fullmatch("[0-9]{1,9}", t) and int(t) > 0 for t in items):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers (e.g. 8,32,128)")
    return [int(t) for t in items]


def positive_int(text: str) -> int:
    return _int(text, 1, INT64_MAX, "a positive integer (below 2**63)")


def non_negative_int(text: str) -> int:
    return _int(text, 0, INT64_MAX, ">= 0 (and below 2**63)")


def seed(text: str) -> int:
    return _int(text, 0, 2 ** 32 - 1, "a seed in [0, 2**32)")


def int_in(lo: int, hi: int):
    """An argparse type for integers in [lo, hi]."""
    def parse(text: str) -> int:
        return _int(text, lo, hi, f"in [{lo}, {hi}]")
    return parse


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """An argparse type for finite numbers in [lo, hi] (a bound excluded where `*_open`; inf = none)."""
    hi_open = hi_open or hi == math.inf

    def parse(text: str) -> float:
        value = _float(text)
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise argparse.ArgumentTypeError(f"{text} is not in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                                             f"{')' if hi_open else ']'}")
        return value
    return parse


positive_float = float_in(0.0, math.inf, lo_open=True)
non_negative_float = float_in(0.0, math.inf)
fraction = float_in(0.0, 1.0)          # [0, 1]
efficiency = float_in(0.0, 1.0, lo_open=True)  # (0, 1]
finite_float = float_in(-math.inf, math.inf)


def existing_path(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: not found")
    return text


def existing_file(text: str) -> str:
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a directory; give a file")
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: file not found")
    return text


def existing_dir(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a file; give a directory")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: directory not found")
    return text


def int_list(text: str) -> list:
    """'3,17,5' -> [3, 17, 5] (non-negative ids)."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(not 0 <= v <= INT64_MAX for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: ids must be >= 0")
    return values


def add_overwrite(ap: argparse.ArgumentParser) -> None:
    """The one --overwrite flag of every writing tool (mot_parallel/outputs.py says what it may replace)."""
    ap.add_argument("--overwrite", action="store_true",
                    help="replace an earlier output of this tool at the same place (never anything else)")


def input_errors() -> Tuple[Type[BaseException], ...]:
    """The project's error types for bad input, among the modules loaded so far (an error type whose module
    was never imported cannot have been raised, and importing it here would cost seconds)."""
    names = (("mot_parallel.config.yaml_io", "ConfigError"), ("mot_parallel.data.indexed", "DataError"),
             ("mot_parallel.training.checkpoint_files", "CheckpointError"), ("mot_parallel.outputs", "OutputError"))
    return tuple(getattr(sys.modules[m], n) for m, n in names if m in sys.modules)


def child_error(what: str, stderr: str) -> str:
    """One `error:` line for a child process that failed: its own last `error:` line, else the last line it wrote
    (a traceback's last line names the exception), after `what` it was doing."""
    lines = stderr.strip().splitlines()
    said = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return f"error: {what}: {(said or lines or ['it wrote no message'])[-1][-300:]}"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """`with user_errors(): ...` exits with 'error: <message>' on a ConfigError, DataError, CheckpointError or
    OutputError."""
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
