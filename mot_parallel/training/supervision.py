"""Training processes under a launcher: stop cleanly when the launcher is gone; explain collective timeouts.

    watch_launcher(env.launcher)        # a daemon thread; SIGTERM to ourselves once the launcher is gone
    if is_collective_timeout(exc): sys.exit("error: " + collective_timeout_message(exc, timeout_s, rank))

Why a watcher. `deepspeed` (DeepSpeed's runner.py) starts `python -m deepspeed.launcher.launch`, which
starts the workers. On one node, and with --no_ssh (one runner per node under srun), the runner installs
no signal handler (it forwards SIGINT/SIGTERM only in multi-node pdsh mode), so SIGTERM to it (what
launch/demo.sh execs, what many schedulers signal) ends it at once. launch.py, which forwards SIGINT and
SIGTERM to its workers as SIGTERM (and SIGKILLs them 30 s later), never hears of it: the workers trained
on unsupervised and never checkpointed. So each worker watches the processes above it and, when one is
gone, raises SIGTERM on itself: the trainer's handler then checkpoints and stops exactly as if the
launcher had forwarded the signal (ranks agree before acting, so all stop at the same step).

What is watched, polled every second (one getppid and one small /proc read):
  the parent       under every launcher that supervises its workers (deepspeed, torchrun, mpi, slurm): a
                   process whose parent died is re-parented, so os.getppid() changes (what
                   PR_SET_PDEATHSIG reports, without its thread-exit surprises);
  the grandparent  under the deepspeed launcher only (the runner above launch.py): the parent's own
                   parent pid in /proc/<parent>/stat changes when the runner dies; PDEATHSIG cannot see it.
Not watched: a plain `python` run ("none") or an unknown launcher ("env"), whose parent is a shell or a
test harness that may legitimately exit first (nohup). A re-parented process never gets its old parent
back, so pid reuse cannot hide a death.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

WATCHED_LAUNCHERS = ("deepspeed", "torchrun", "mpi", "slurm")


def parent_of(pid: int) -> Optional[int]:
    """The parent pid of `pid` from /proc (None where unknown: no /proc, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (2nd field) is in parentheses and may hold spaces or ')': split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[1])


@dataclass(frozen=True)
class Lineage:
    """The supervising processes this worker saw at start-up."""
    parent: int
    grandparent: Optional[int]  # None: not watched

    def lost(self) -> Optional[str]:
        """Which supervisor is gone, as a phrase; None while all are alive."""
        if os.getppid() != self.parent:
            return f"its launcher process (pid {self.parent}) is gone"
        if self.grandparent is not None and parent_of(self.parent) != self.grandparent:
            return f"the launcher that started its launcher process (pid {self.grandparent}) is gone"
        return None


def lineage_for(launcher: str) -> Optional[Lineage]:
    """What to watch under `launcher` (LaunchEnv.launcher); None for a process nobody supervises."""
    if launcher not in WATCHED_LAUNCHERS:
        return None
    parent = os.getppid()
    return Lineage(parent, parent_of(parent) if launcher == "deepspeed" else None)


def stop_as_on_sigterm(why: str) -> None:
    """Say why, then SIGTERM ourselves: the trainer checkpoints and stops (no handler: the process ends)."""
    print(f"[mot_parallel] pid {os.getpid()}: {why}; stopping as on SIGTERM", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


class StopRequest:
    """SIGTERM (preemption, the launcher forwarding a stop, the launcher's death above) and SIGINT (Ctrl-C,
    sent to the whole process group) ask the trainer to checkpoint and stop at the next step; `signal` is
    the name of the first one. SIGINT again while stopping stops at once, unsaved (KeyboardInterrupt)."""

    def __init__(self):
        self.signal: Optional[str] = None
        self.interrupted = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                raise KeyboardInterrupt
            self.interrupted = True
        self.signal = self.signal or signal.Signals(signum).name


def watch_launcher(launcher: str, on_gone: Callable[[str], None] = stop_as_on_sigterm,
                   interval_s: float = 1.0) -> Optional[threading.Thread]:
    """Start a daemon thread that calls `on_gone(why)` once, when a supervising process is gone."""
    lineage = lineage_for(launcher)
    if lineage is None:
        return None

    def poll() -> None:
        while True:
            why = lineage.lost()
            if why is not None:
                on_gone(why)
                return
            time.sleep(interval_s)

    thread = threading.Thread(target=poll, name="mot-launcher-watch", daemon=True)
    thread.start()
    return thread


_TIMEOUT = re.compile(r"timed out|timeout", re.IGNORECASE)


def is_collective_timeout(exc: BaseException) -> bool:
    """A collective (or the rendezvous) gave up waiting for another rank: gloo's or torch's own error."""
    import torch.distributed as dist  # here, so that the watcher alone needs only the standard library
    text = str(exc)
    return (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "gloo" in text)) \
        and _TIMEOUT.search(text) is not None


def collective_timeout_message(exc: BaseException, timeout_s: float, rank: int) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"rank {rank}: a collective or the start-up rendezvous did not complete within "
            f"parallel.collective_timeout_s={timeout_s:g} s ({first}). Another rank is stopped, deadlocked, "
            "dead or far slower (a long checkpoint save, a stalled file system); its log says which. If that "
            "wait was legitimate, raise parallel.collective_timeout_s.")
