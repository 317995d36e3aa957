"""A DeepSpeed op build that died must not hang every later start on the host.

DeepSpeed JIT-compiles its ops (on CPU the shared-memory comm op, at its first `init_distributed`) through
torch's cpp_extension, which guards a build with <torch extensions root>/[<python>_<accelerator>/]<op>/lock
(the root: TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions): created by the builder
(and held open) for the build, removed when it ends. A build killed midway (Ctrl-C, a job time limit, an
OOM kill) leaves the file, and every later build of that op waits for it to vanish, for ever, silently.

`check_op_build_locks()` runs before DeepSpeed starts: for each such lock it asks whether a process on this
host works in the op's build directory (a live build runs ninja and the compilers there: wait, as torch
would). If none does, the builder may be on another host sharing the directory, so it waits while the
lock is younger than `stale_after_s`; a lock older than that (or still there after waiting that long)
with no builder, seen twice `poll_s` apart, is refused with the path to remove.
"""
from __future__ import annotations

import glob
import os
import time
from typing import Callable, Optional

from ..config import ConfigError

STALE_AFTER_S = 600.0  # a DeepSpeed op builds in about a minute; ten without a builder is a dead one


class StaleBuildLock(ConfigError):
    """A build lock nobody holds: the start-up environment, reported as one `error:` line like bad input."""


def extensions_root() -> str:
    """TORCH_EXTENSIONS_DIR, else torch's default (ops then build in a <python>_<accelerator>/ level below)."""
    from torch.utils.cpp_extension import get_default_build_root
    return os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()


def builder_on_this_host(build_dir: str) -> Optional[int]:
    """The pid of a process on this host working in `build_dir` (torch runs ninja, and ninja the compilers,
    there for the whole build); None: none, or /proc is not readable. One readlink per process: scanning
    every process's descriptors for the lock took 49 s on a host with 10^6 open descriptors."""
    real = os.path.realpath(build_dir)
    for cwd in glob.glob("/proc/[0-9]*/cwd"):
        try:
            if os.readlink(cwd) == real:
                return int(cwd.split("/")[2])
        except OSError:  # the process ended, or it is not ours to look at
            continue
    return None


def check_op_build_locks(root: Optional[str] = None, stale_after_s: float = STALE_AFTER_S, poll_s: float = 2.0,
                         clock: Callable[[], float] = time.time) -> None:
    """Return when no op build lock under `root` is left by a dead build; raise StaleBuildLock otherwise."""
    root = root or extensions_root()
    root = glob.escape(root)
    for lock in sorted(glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock"))):
        waited_since, unheld = clock(), 0
        while True:
            try:
                age = clock() - os.stat(lock).st_mtime
            except OSError:
                break  # the build finished (or the lock is not ours to judge: torch will say)
            stale = builder_on_this_host(os.path.dirname(lock)) is None and \
                max(age, clock() - waited_since) > stale_after_s
            unheld = unheld + 1 if stale else 0
            if unheld == 2:  # seen twice, poll_s apart: torch holds the lock a moment before and after ninja
                raise StaleBuildLock(
                    f"{lock} is left by a DeepSpeed op build that did not finish ({age / 60:.0f} min old, no process "
                    "on this host is building): every DeepSpeed start waits on it for ever. If no other host is "
                    f"building this op now, remove it (rm {lock}) and start again")
            time.sleep(poll_s)
