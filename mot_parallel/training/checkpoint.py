"""Atomic checkpoints of explicit stateful parts (torchtitan's way), on top of DeepSpeed's save/load.

    <checkpoint.dir>/step_00000120/   DeepSpeed's files (model, optimizer, LR schedule), rng_rank_<r>.pt,
                                      checkpoint.json (the manifest: checkpoint_files.py)
    <checkpoint.dir>/latest           the tag of the newest checkpoint (a hint; resume trusts manifests)

The manager is given what it saves (CheckpointContents): the DeepSpeed engine, named stateful parts (`state_dict()` /
`load_state_dict()`: the training step, the data loader) that go into DeepSpeed's client state, this
rank's RNG streams (their own file per rank, tensors and plain values only), and the model settings the
manifest records. A save writes into <dir>/.staging/<tag>; every rank hashes the files it wrote
(checkpoint_hashes.py); rank 0 gathers the hashes, adds the manifest, renames the directory into place
(atomic on one filesystem) and then moves `latest` (through a fresh temporary name: an existing file or
link is never written through). A crash leaves the previous checkpoint untouched, and the next start
removes the staging leftovers (run_dir.py). A failed write (disk full, read-only directory) stops every
rank with the path, the free space and the errno, never a bare C++ message.

Pruning (keep_last) counts only complete checkpoints and never removes the one just written or the one
this run resumed from (the last one known to load), so an incomplete newer directory (skipped with
checkpoint.on_corrupt=previous) can neither push good checkpoints out nor be deleted as evidence; it is
replaced when the run writes that step again.
A load checks the checkpoint is still complete, scans every file for objects that are not data, checks
every file's hash (each rank a share), then lets DeepSpeed load only what the manifest lists.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional, Protocol

import torch
import torch.distributed as dist

from ..distributed.startup import barrier_if_distributed
from . import rng
from .checkpoint_files import (FORMAT_1, CheckpointError, problems, read_manifest, regular_files, rng_file, step_dirs,
                               tag_for, unsafe_pickles, write_manifest)
from .checkpoint_hashes import FileGuard, file_record, verify_share
from .run_dir import STAGING, disk_full, filesystem_error, free_space, unwritable


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainState:
    """Where training is, as a stateful part: optimizer steps, and the tokens, model FLOPs and wall-clock
    seconds of training steps behind it (summed across resumes; validation records carry them)."""
    step: int = 0
    tokens_total: int = 0
    flops_total: float = 0.0
    train_time_s: float = 0.0

    def advance(self, tokens: int, flops: float, seconds: float) -> None:
        self.step += 1
        self.tokens_total += tokens
        self.flops_total += flops
        self.train_time_s += seconds

    def progress(self) -> dict:
        return {"tokens_total": self.tokens_total, "flops_total": self.flops_total, "train_time_s": self.train_time_s}

    def state_dict(self) -> dict:
        return {"step": self.step, **self.progress()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.tokens_total = int(state.get("tokens_total", 0))
        self.flops_total = float(state.get("flops_total", 0.0))
        self.train_time_s = float(state.get("train_time_s", 0.0))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def agree(failure: Optional[BaseException], what: str) -> None:
    """Every rank raises if any rank failed (MAX over the world), so no rank waits in a later collective."""
    flag = torch.tensor([1.0 if failure is not None else 0.0])
    if _distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if flag.item():
        raise CheckpointError(f"{what} failed on another rank (its message is in that rank's log)")


_SHORT_WRITE = ("No space left", "write failed", "unexpected pos")  # torch's zip writer on a full disk


def write_failure(path: str, e: BaseException) -> CheckpointError:
    """A clear error for a failed checkpoint write: the path, the errno, the free space. The filesystem is
    asked (a small synced write) what the failed write met, since torch's C++ writer does not say."""
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    met = e if isinstance(e, OSError) and e.errno else filesystem_error(directory)
    if met is None and any(s in str(e) for s in _SHORT_WRITE):
        met = OSError(errno.ENOSPC, "No space left on device")
    if met is not None and met.errno in (errno.ENOSPC, errno.EDQUOT):
        why = disk_full(directory, met)
    elif met is not None:
        why = unwritable(directory, met)
    else:
        why = f"{directory} accepts writes again ({free_space(directory)})"
    first = str(e).splitlines()[0] if str(e) else ""
    return CheckpointError(f"writing checkpoint {path} failed: {why}. Original error: {type(e).__name__}: {first}")


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint holds: the DeepSpeed engine (model, optimizer, LR schedule), named stateful parts
    (they go into DeepSpeed's client state) and this rank's RNG streams (a file of their own)."""
    engine: object
    parts: Dict[str, Stateful]
    rng_streams: rng.RNGStreams


class CheckpointManager:
    """Saves `contents` under `directory` (keeping the newest `keep_last`), recording the run's `layout` and
    `model` settings in each manifest; `fault`: the test seam (faults.py)."""

    def __init__(self, directory: str, keep_last: int, rank: int, contents: CheckpointContents, layout,
                 fault=None, model: Optional[dict] = None):
        self.dir, self.keep_last, self.rank, self.layout, self.model = directory, keep_last, rank, layout, model
        self.engine, self.parts, self.rng_streams = contents.engine, contents.parts, contents.rng_streams
        self.fault = fault
        self.guard = FileGuard(self.engine.checkpoint_engine, rank)
        self.engine.checkpoint_engine = self.guard
        self.resumed: Optional[str] = None  # the tag loaded from this directory: never pruned by this run

    def save(self, step: int) -> str:
        tag = tag_for(step)
        staging = os.path.join(self.dir, STAGING)
        if self.rank == 0:
            _remove(os.path.join(staging, tag))
            os.makedirs(staging, exist_ok=True)
        barrier_if_distributed()
        failure, written = None, {}
        try:
            client = {name: part.state_dict() for name, part in self.parts.items()}
            self.engine.save_checkpoint(staging, tag=tag, client_state=client, save_latest=False)
            path = os.path.join(staging, tag, rng_file(self.rank))
            rng.save(path + ".tmp", self.rng_streams.state_dict())
            os.replace(path + ".tmp", path)
            written = self.guard.take_written(os.path.join(staging, tag))
            written[rng_file(self.rank)] = file_record(path, self.rank)
        except (OSError, RuntimeError) as e:
            failure = write_failure(os.path.join(staging, tag), e)
        agree(failure, f"writing checkpoint {tag}")
        if self.fault is not None:
            self.fault.at("crash_in_save")
        gathered = [written]
        if _distributed():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, written)
        failure = None
        if self.rank == 0:
            try:
                self._publish(staging, tag, step, {k: v for w in gathered for k, v in w.items()})
            except (OSError, CheckpointError) as e:
                failure = e if isinstance(e, CheckpointError) else write_failure(os.path.join(self.dir, tag), e)
        agree(failure, f"publishing checkpoint {tag}")
        return tag

    def _publish(self, staging: str, tag: str, step: int, records: Dict[str, dict]) -> None:
        src = os.path.join(staging, tag)
        found, bad = regular_files(src)
        if bad:
            raise CheckpointError(f"refusing to publish {src}: " + "; ".join(bad))
        # a file DeepSpeed wrote other than through its checkpoint engine is hashed here
        files = {rel: records.get(rel) or file_record(os.path.join(src, rel), None) for rel in sorted(found)}
        write_manifest(src, step, self.layout, self.model, files)
        final = os.path.join(self.dir, tag)
        _remove(final)  # only an incomplete checkpoint of this step can be here (see the module docstring)
        os.replace(src, final)
        write_latest(self.dir, tag)
        if self.keep_last > 0:
            self._prune(tag)

    def _prune(self, written: str) -> None:
        complete = [t for _, t in step_dirs(self.dir) if not problems(os.path.join(self.dir, t))]
        keep = set(complete[-self.keep_last:]) | {written, self.resumed}
        for old in complete:
            if old not in keep:
                shutil.rmtree(os.path.join(self.dir, old), ignore_errors=True)

    def load(self, directory: str, tag: str) -> None:
        """Restore the engine, every part and this rank's RNG streams from a validated checkpoint."""
        path = os.path.join(directory, tag)
        failure = None
        try:
            meta = read_manifest(path)
            self._check(path, meta)
        except Exception as e:  # noqa: BLE001 - a garbled manifest too: every rank must hear of it
            failure = e if isinstance(e, CheckpointError) else CheckpointError(f"{path}: unreadable "
                                                                               f"({type(e).__name__}: {e})")
        agree(failure, f"checking {path}")
        self.guard.allowed = {os.path.realpath(os.path.join(path, rel)) for rel in meta["files"]}
        try:
            _, client = self.engine.load_checkpoint(directory, tag=tag)
            if client is None:
                raise CheckpointError(f"{path}: DeepSpeed found no checkpoint to load")
            for name, part in self.parts.items():
                if name not in client:
                    raise CheckpointError(f"{path}: no {name!r} state in the checkpoint (written by another tool?)")
                part.load_state_dict(client[name])
            self.rng_streams.load_state_dict(rng.load(os.path.join(path, rng_file(self.rank))))
        except CheckpointError as e:
            failure = e
        except Exception as e:  # noqa: BLE001 - DeepSpeed's errors become one message naming the checkpoint
            failure = CheckpointError(f"{path}: loading failed on rank {self.rank}: {type(e).__name__}: {e}")
        finally:
            self.guard.allowed = None
        agree(failure, f"loading {path}")
        if os.path.realpath(directory) == os.path.realpath(self.dir):
            self.resumed = tag

    def _check(self, path: str, meta: dict) -> None:
        """Rank 0: still complete, nothing but data in any file; every rank: its share of the hashes."""
        if self.rank == 0:
            bad = problems(path)
            if bad:
                raise CheckpointError(f"{path} is no longer a complete checkpoint:\n  - " + "\n  - ".join(bad))
            unsafe = unsafe_pickles(path)
            if unsafe:
                raise CheckpointError(f"{path}: refused, it would build objects that are not tensors, plain values "
                                      f"or DeepSpeed records when loaded: {unsafe[:5]}")
        if meta.get("format") == FORMAT_1:
            return  # no hashes to check (resume warned)
        world = dist.get_world_size() if _distributed() else 1
        bad = verify_share(path, meta["files"], self.rank, world)
        if bad:
            raise CheckpointError(f"{path}: refused:\n  - " + "\n  - ".join(bad) + "\nResume another checkpoint "
                                  "(checkpoint.resume=<its directory>), or restore this one's files")


def write_latest(directory: str, tag: str) -> None:
    """Point `latest` at `tag`: written under a fresh name (O_EXCL: never through an existing file or
    link), then renamed over `latest` (which replaces a link, never its target)."""
    fd, tmp = tempfile.mkstemp(prefix=".latest.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, "latest"))
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _remove(path: str) -> None:
    """Remove a directory of ours, or a link put in its place (never what the link points to)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def note(message: str) -> None:
    print(f"[mot_parallel] {message}", file=sys.stderr, flush=True)
