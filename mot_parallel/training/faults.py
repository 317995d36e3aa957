"""Fault injection for the crash/kill tests, driven by MOT_FAULT (one place, off unless set):
  MOT_FAULT=crash_in_save[:N] die (exit 17) in the N-th save (default 1) of this process, after writing
                              the checkpoint's files and before publishing it
  MOT_FAULT=kill_after_step:N die (exit 17) right after optimizer step N was logged
  MOT_FAULT=stall_after_step:N block right after step N was logged, so a test can kill the launcher
                              from outside at a known step
  MOT_FAULT=hold_after_step:N  block right after step N was logged until a stop is requested (SIGTERM,
                              or the launcher's death), so a test can stop the run at a known step
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable


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


def maybe_fault_after_step(step: int, stop_requested: Callable[[], bool] = lambda: False) -> None:
    name, _, at = _spec().partition(":")
    if name in ("kill_after_step", "stall_after_step", "hold_after_step") and int(at) == step:
        if name == "kill_after_step":
            _die()
        sys.stdout.flush()
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not (name == "hold_after_step" and stop_requested()):
            time.sleep(0.05)
