"""Fault injection for the crash/kill tests, driven by MOT_FAULT (one place, off unless set):
  MOT_FAULT=crash_in_save[:N] die (exit 17) in the N-th save (default 1) of this process, after writing
                              the checkpoint's files and before publishing it
  MOT_FAULT=kill_after_step:N die (exit 17) right after optimizer step N was logged
"""
from __future__ import annotations

import os
import sys


def _spec():
    return os.environ.get("MOT_FAULT", "")


_hits = {}  # per-process count of fault points reached (test-only state)


def _die() -> None:
    """Exit at once (no cleanup, no atexit), as a crash or SIGKILL would, keeping what was printed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(17)


def maybe_crash(point: str) -> None:
    name, _, nth = _spec().partition(":")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] == int(nth or 1):
        _die()


def maybe_kill_after_step(step: int) -> None:
    spec = _spec()
    if spec.startswith("kill_after_step:") and int(spec.split(":")[1]) == step:
        _die()
