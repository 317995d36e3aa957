"""The run directory at start-up: one run at a time, its own leftovers removed, checkpoints writable.

    claim_run_dir(cfg, rank)               # the Trainer, before any process group: held until the process ends
    claim_run_dir(cfg, rank, hold=False)   # the preflight (`--check` too): the same checks, lock released

The launched rank 0, in this order:
  1. locks <run.output_dir>/.run.lock (and <checkpoint.dir>/.run.lock when checkpoint.dir lies elsewhere)
     with flock, held until the process ends: the OS releases it however the process dies, so a crashed
     run never blocks its relaunch. A second run in the same directory is refused, naming the holder (pid,
     host and start time, written into the lock file): two runs would resume the same checkpoint, append
     to the same metrics and prune each other's saves;
  2. removes <checkpoint.dir>/.staging, the unpublished files of an interrupted save. Only the lock holder
     may (the staging directory of a live run is its save in progress), and it must come before step 3:
     on a full disk those leftovers may be what fills it;
  3. writes and syncs a probe file in checkpoint.dir: an unwritable directory, a full disk (ENOSPC) or an
     exhausted quota (EDQUOT) is named with the path and the free space.
The other ranks only check that they may write there: they start with rank 0 and must not fail on a disk
rank 0 is about to free. A filesystem without flock (Lustre mounted without -o flock) is reported and
the run goes on unlocked. A process takes a lock once (a second claim of a held lock is a no-op).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import shutil
import socket
import sys
import time
from typing import Dict, Optional

from .checkpoint_files import CheckpointError


def checkpoint_dir(cfg) -> str:
    """Where a run's checkpoints live: checkpoint.dir, else <run.output_dir>/checkpoints."""
    return cfg.checkpoint.dir or os.path.join(cfg.run.output_dir, "checkpoints")

LOCK = ".run.lock"
STAGING = ".staging"
_held: Dict[str, int] = {}  # lock file real path -> open fd, for the life of the process (an OS resource)


def claim_run_dir(cfg, rank: int, hold: bool = True) -> None:
    """Steps 1-3 above for the config's run and checkpoint directories (`rank`: the launched rank);
    `hold=False` releases the locks this call took once the checks are done."""
    ckpt = checkpoint_dir(cfg)
    if rank != 0:
        return _check_access(ckpt)
    dirs = [cfg.run.output_dir]
    if not os.path.realpath(ckpt).startswith(os.path.realpath(cfg.run.output_dir) + os.sep):
        dirs.append(ckpt)
    taken = []
    try:
        for d, key in zip(dirs, ("run.output_dir", "checkpoint.dir")):
            _makedirs(d, key)
            taken += [d] if lock(d) else []
        remove_staging(ckpt)
        check_writable(ckpt)
    finally:
        for d in taken if not hold else ():
            release(d)


def lock(directory: str, wait_s: float = 2.0) -> bool:
    """Hold an exclusive flock on <directory>/.run.lock until the process ends (or `release`); True when
    this call took it. A short wait lets a preflight of the same launch, holding it for a moment, finish."""
    path = os.path.realpath(os.path.join(directory, LOCK))
    if path in _held:
        return False
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise CheckpointError(unwritable(directory, e, "run directory")) from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                print(f"[mot_parallel] warning: cannot lock {path} ({e.strerror}): this filesystem has no flock, "
                      "so a second run started in this directory would not be detected", file=sys.stderr)
                return False
            if time.monotonic() > deadline:
                holder = _read(fd)
                os.close(fd)
                raise CheckpointError(
                    f"{directory} is in use by another run ({holder or 'holder unknown'}): two runs in one directory "
                    "would resume the same checkpoint and prune each other's saves. Wait for it to end or stop "
                    "it, or use another run.output_dir (or checkpoint.dir)") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
    _held[path] = fd
    return True


def release(directory: str) -> None:
    fd = _held.pop(os.path.realpath(os.path.join(directory, LOCK)), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def remove_staging(ckpt: str) -> None:
    """Remove the unpublished leftovers of an interrupted save (the caller holds the run's lock)."""
    staging = os.path.join(ckpt, STAGING)
    if os.path.islink(staging) or (os.path.exists(staging) and not os.path.isdir(staging)):
        raise CheckpointError(f"{staging} is not a directory this run created (a symbolic link or a file): "
                              "checkpoints are staged there, so remove it")
    shutil.rmtree(staging, ignore_errors=True)


def check_writable(directory: str) -> None:
    """Fail at start-up, not at the first save, when checkpoints cannot be written here."""
    _makedirs(directory)
    failure = filesystem_error(directory)
    if failure is not None:
        raise CheckpointError(unwritable(directory, failure))


def filesystem_error(directory: str) -> Optional[OSError]:
    """The error a small, synced write into `directory` gets now (None if it succeeds)."""
    probe = os.path.join(directory, f".write_test.{socket.gethostname()}.{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return e
    finally:
        if os.path.isfile(probe):
            os.remove(probe)
    return None


def unwritable(directory: str, e: OSError, key: str = "checkpoint.dir") -> str:
    """'<key> <directory> ...': what `e` (met writing there) means and the fix."""
    code = errno.errorcode.get(e.errno or 0, "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{key} {directory}: {disk_full(directory, e)}"
    return (f"{key} {directory} is not writable ({e.strerror}{', ' + code if code else ''}); fix its "
            "permissions or point checkpoint.dir (or run.output_dir) elsewhere")


def disk_full(directory: str, e: OSError) -> str:
    what = "the disk is full" if e.errno == errno.ENOSPC else "the disk quota is exhausted"
    return (f"{what} ({errno.errorcode[e.errno]}, {free_space(directory)}); free space there or point checkpoint.dir "
            "(or run.output_dir) elsewhere")


def free_space(path: str) -> str:
    target = path
    while target and not os.path.exists(target):
        target = os.path.dirname(target)
    try:
        return f"{shutil.disk_usage(target or '.').free / 2**30:.2f} GiB free"
    except OSError:
        return "free space unknown"


def _makedirs(directory: str, key: str = "checkpoint.dir") -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointError(unwritable(directory, e, key)) from None


def _check_access(directory: str) -> None:
    _makedirs(directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(unwritable(directory, PermissionError(errno.EACCES, "Permission denied")))
