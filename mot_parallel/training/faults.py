"""Fault injection: the test seam for the crash/kill tests, off unless MOT_FAULT is set.

The environment is read once, here, when the trainer starts (`FaultInjector.from_env()`, None in
production); the trainer and the checkpoint manager get the injector explicitly and call it at two
points. Specs:
  MOT_FAULT=crash_in_save[:N]    die (exit 17) in the N-th save (default 1) of this process, after writing
                                 the checkpoint's files and before publishing it
  MOT_FAULT=kill_after_step:N    die (exit 17) right after optimizer step N was logged
  MOT_FAULT=stall_after_step:N   block right after step N was logged, so a test can kill the launcher from
                                 outside at a known step
  MOT_FAULT=hold_after_step:N    block right after step N was logged until a stop is requested (SIGTERM, or
                                 the launcher's death), so a test can stop the run at a known step
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

POINTS = ("crash_in_save", "kill_after_step", "stall_after_step", "hold_after_step")


class FaultInjector:
    def __init__(self, spec: str):
        name, _, arg = spec.partition(":")
        if name not in POINTS:
            raise ValueError(f"MOT_FAULT={spec!r}: unknown fault {name!r}; one of {list(POINTS)}")
        self.name, self.arg, self.hits = name, int(arg or 1), 0

    @classmethod
    def from_env(cls) -> Optional["FaultInjector"]:
        spec = os.environ.get("MOT_FAULT", "")
        return cls(spec) if spec else None

    def at(self, point: str) -> None:
        """A named point in the code (crash_in_save) was reached."""
        if point == self.name:
            self.hits += 1
            if self.hits == self.arg:
                _die()

    def after_step(self, step: int, stop_requested: Callable[[], bool] = lambda: False) -> None:
        if self.arg != step or self.name not in POINTS[1:]:
            return
        if self.name == "kill_after_step":
            _die()
        sys.stdout.flush()
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and not (self.name == "hold_after_step" and stop_requested()):
            time.sleep(0.05)


def _die() -> None:
    """Exit at once (no cleanup, no atexit), as a crash or SIGKILL would, keeping what was printed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(17)
