"""Atomic checkpoints of explicit stateful parts (torchtitan's way), on top of DeepSpeed's save/load.

    <checkpoint.dir>/step_00000120/   DeepSpeed's files (model, optimizer, LR schedule), rng_rank_<r>.pt,
                                      checkpoint.json (the manifest: checkpoint_files.py)
    <checkpoint.dir>/latest           the tag of the newest checkpoint (a hint; resume trusts manifests)

The manager is given what it saves: the DeepSpeed engine, named stateful parts (`state_dict()` /
`load_state_dict()`: the training step, the data loader) that go into DeepSpeed's client state, and this
rank's RNG streams (their own file per rank, tensors and plain values only). A save writes into
<dir>/.staging/<tag>; when every rank has written, rank 0 adds the manifest, renames the directory into
place (atomic on one filesystem) and then moves `latest`; keep_last prunes older ones. A crash leaves the
previous checkpoint untouched, and the next run removes the staging leftovers. A failed write (disk full,
read-only directory) stops every rank with the path and the free space, never a bare C++ message.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Protocol

import torch
import torch.distributed as dist

from ..distributed.startup import barrier_if_distributed
from . import rng
from .checkpoint_files import CheckpointError, step_dirs, unsafe_pickles, write_manifest

STAGING = ".staging"


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


def agree(failure: Optional[BaseException], what: str) -> None:
    """Every rank raises if any rank failed (MAX over the world), so no rank waits in a later collective."""
    flag = torch.tensor([1.0 if failure is not None else 0.0])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if flag.item():
        raise CheckpointError(f"{what} failed on another rank (its message is in that rank's log)")


def write_failure(path: str, e: BaseException) -> CheckpointError:
    """A clear error for a failed checkpoint write: the path, the free space, ENOSPC named."""
    target = path if os.path.exists(path) else os.path.dirname(path) or "."
    try:
        free = f"{shutil.disk_usage(target).free / 2**30:.2f} GiB free"
    except OSError:
        free = "free space unknown"
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) or "write failed" in str(e)
    hint = "the disk is full (ENOSPC): free space or point checkpoint.dir elsewhere" if full else \
        "check that checkpoint.dir is writable"
    return CheckpointError(f"writing checkpoint {path} failed ({free}): {hint}. "
                           f"Original error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


class CheckpointManager:
    def __init__(self, directory: str, keep_last: int, rank: int, engine, parts: Dict[str, Stateful],
                 rng_streams: rng.RNGStreams, layout, fault=None):
        self.dir, self.keep_last, self.rank, self.layout = directory, keep_last, rank, layout
        self.engine, self.parts, self.rng_streams, self.fault = engine, parts, rng_streams, fault
        if rank == 0:  # a save interrupted by a crash left its files here; they were never published
            shutil.rmtree(os.path.join(directory, STAGING), ignore_errors=True)
        barrier_if_distributed()

    def save(self, step: int) -> str:
        tag = f"step_{step:08d}"
        staging = os.path.join(self.dir, STAGING)
        if self.rank == 0:
            shutil.rmtree(os.path.join(staging, tag), ignore_errors=True)
            os.makedirs(staging, exist_ok=True)
        barrier_if_distributed()
        failure = None
        try:
            client = {name: part.state_dict() for name, part in self.parts.items()}
            self.engine.save_checkpoint(staging, tag=tag, client_state=client, save_latest=False)
            path = os.path.join(staging, tag, f"rng_rank_{self.rank}.pt")
            rng.save(path + ".tmp", self.rng_streams.state_dict())
            os.replace(path + ".tmp", path)
        except (OSError, RuntimeError) as e:
            failure = write_failure(os.path.join(staging, tag), e)
        agree(failure, f"writing checkpoint {tag}")
        if self.fault is not None:
            self.fault.at("crash_in_save")
        barrier_if_distributed()
        if self.rank == 0:
            self._publish(staging, tag, step)
        barrier_if_distributed()
        return tag

    def _publish(self, staging: str, tag: str, step: int) -> None:
        write_manifest(os.path.join(staging, tag), step, self.layout)
        final = os.path.join(self.dir, tag)
        shutil.rmtree(final, ignore_errors=True)  # only an unpublished leftover can be here (see resume)
        os.replace(os.path.join(staging, tag), final)
        with open(os.path.join(self.dir, "latest.tmp"), "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(self.dir, "latest.tmp"), os.path.join(self.dir, "latest"))  # moves last
        if self.keep_last > 0:
            for _, old in step_dirs(self.dir)[:-self.keep_last]:
                shutil.rmtree(os.path.join(self.dir, old), ignore_errors=True)

    def load(self, directory: str, tag: str) -> None:
        """Restore the engine, every part and this rank's RNG streams from a validated checkpoint."""
        path = os.path.join(directory, tag)
        unsafe = unsafe_pickles(path) if self.rank == 0 else []
        agree(CheckpointError(f"{path}: refused, it would build objects that are not tensors, plain values or "
                              f"DeepSpeed records when loaded: {unsafe[:5]}") if unsafe else None,
              f"checking {path}")
        failure = None
        try:
            _, client = self.engine.load_checkpoint(directory, tag=tag)
            if client is None:
                raise CheckpointError(f"{path}: DeepSpeed found no checkpoint to load")
            for name, part in self.parts.items():
                if name not in client:
                    raise CheckpointError(f"{path}: no {name!r} state in the checkpoint (written by another tool?)")
                part.load_state_dict(client[name])
            self.rng_streams.load_state_dict(rng.load(os.path.join(path, f"rng_rank_{self.rank}.pt")))
        except CheckpointError as e:
            failure = e
        except Exception as e:  # noqa: BLE001 - DeepSpeed's errors become one message naming the checkpoint
            failure = CheckpointError(f"{path}: loading failed on rank {self.rank}: {type(e).__name__}: {e}")
        agree(failure, f"loading {path}")


def check_writable(directory: str) -> None:
    """Fail at start-up, not at the first save, when checkpoints cannot be written."""
    probe = os.path.join(directory, f".write_test.{os.uname().nodename}.{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"checkpoint.dir {directory} is not writable ({e.strerror}); fix its permissions "
                              "or point checkpoint.dir (or run.output_dir) elsewhere") from None


def note(message: str) -> None:
    print(f"[mot_parallel] {message}", file=sys.stderr, flush=True)
