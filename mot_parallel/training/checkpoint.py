"""Atomic checkpoints on top of DeepSpeed's save/load.

    <checkpoint.dir>/step_00000120/   DeepSpeed's files + rng_rank_<r>.pt (per-rank RNG states)
    <checkpoint.dir>/latest           the tag of the newest complete checkpoint
A save writes into <dir>/.staging/<tag>; only when every rank has finished does rank 0 rename it
into place (atomic on one filesystem) and then move `latest` (temp file + rename). A crash anywhere
before that leaves the previous checkpoint and `latest` untouched; the staging leftovers are removed
by the next save. Older checkpoints beyond `keep_last` are deleted after `latest` moved.
"""
from __future__ import annotations

import os
import random
import shutil
from typing import Optional, Tuple

import numpy as np
import torch

from ..distributed import device as dev
from ..distributed.init import barrier_if_distributed
from . import faults

STAGING = ".staging"


def rng_state(device: torch.device, tracker=None) -> dict:
    return {"torch": torch.get_rng_state(), "device": dev.get_rng_state(device), "numpy": np.random.get_state(),
            "python": random.getstate(), "tracker": tracker.get_states() if tracker is not None else None}


def set_rng_state(state: dict, device: torch.device, tracker=None) -> None:
    torch.set_rng_state(state["torch"])
    dev.set_rng_state(state["device"], device)
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if tracker is not None and state.get("tracker") is not None:
        tracker.set_states(state["tracker"])


class CheckpointManager:
    def __init__(self, directory: str, keep_last: int, rank: int):
        self.dir, self.keep_last, self.rank = directory, keep_last, rank

    def latest(self) -> Optional[str]:
        path = os.path.join(self.dir, "latest")
        if not os.path.isfile(path):
            return None
        tag = open(path).read().strip()
        return tag if os.path.isdir(os.path.join(self.dir, tag)) else None

    def resolve(self, resume: str) -> Optional[Tuple[str, str]]:
        """(checkpoint dir, tag) to resume from, per `checkpoint.resume`."""
        if resume == "none":
            return None
        if resume == "auto":
            tag = self.latest()
            return (self.dir, tag) if tag else None
        path = os.path.abspath(resume)
        if os.path.isfile(os.path.join(path, "latest")):
            return path, open(os.path.join(path, "latest")).read().strip()
        if os.path.isdir(path):
            return os.path.dirname(path), os.path.basename(path)
        raise FileNotFoundError(f"checkpoint.resume={resume!r}: no such checkpoint directory")

    def save(self, engine, step: int, client_state: dict, rng: dict) -> str:
        tag = f"step_{step:08d}"
        staging = os.path.join(self.dir, STAGING)
        if self.rank == 0:
            shutil.rmtree(os.path.join(staging, tag), ignore_errors=True)
            os.makedirs(staging, exist_ok=True)
        barrier_if_distributed()
        engine.save_checkpoint(staging, tag=tag, client_state=client_state, save_latest=False)
        rng_path = os.path.join(staging, tag, f"rng_rank_{self.rank}.pt")
        torch.save(rng, rng_path + ".tmp")
        os.replace(rng_path + ".tmp", rng_path)
        faults.maybe_crash("crash_in_save")
        barrier_if_distributed()
        if self.rank == 0:
            final = os.path.join(self.dir, tag)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(os.path.join(staging, tag), final)
            with open(os.path.join(self.dir, "latest.tmp"), "w") as f:
                f.write(tag)
                f.flush()
                os.fsync(f.fileno())
            os.replace(os.path.join(self.dir, "latest.tmp"), os.path.join(self.dir, "latest"))  # moves last
            self._prune(tag)
        barrier_if_distributed()
        return tag

    def _prune(self, newest: str) -> None:
        if self.keep_last <= 0:
            return
        tags = sorted(t for t in os.listdir(self.dir) if t.startswith("step_") and os.path.isdir(os.path.join(self.dir, t)))
        for old in tags[:-self.keep_last]:
            if old != newest:
                shutil.rmtree(os.path.join(self.dir, old), ignore_errors=True)

    def load(self, engine, directory: str, tag: str) -> Tuple[dict, Optional[dict]]:
        """(client state, this rank's RNG state or None)."""
        _, client = engine.load_checkpoint(directory, tag=tag)
        if client is None:
            raise RuntimeError(f"{os.path.join(directory, tag)}: DeepSpeed could not load this checkpoint")
        rng_path = os.path.join(directory, tag, f"rng_rank_{self.rank}.pt")
        rng = torch.load(rng_path, weights_only=False) if os.path.isfile(rng_path) else None
        return client, rng
