"""The run's random streams in one place: how they are seeded and how their state goes into checkpoints.

Streams: torch's default generator, the device's, numpy's and Python's global generators, and DeepSpeed's
model-parallel RNG tracker (the TP-region dropout stream, which DeepSpeed's activation checkpointing
restores on recompute, so TP-region dropout is recompute-safe).
Seeds: the default stream gets seed + 100 * pp_rank (equal across TP and DP ranks, so TP/SP runs match a
single process; distinct per pipeline stage); DeepSpeed derives the TP stream from it per TP rank
(+ 2718 + tp_rank, Megatron's rule).
The saved state holds only tensors and plain Python values, written with torch.save and read back with
weights_only=True: a checkpoint file can hold data, never code.
"""
from __future__ import annotations

import pickle
import random

import numpy as np
import torch

from ..distributed import device as dev


def seed_model_parallel(seed: int, pp_rank: int, mpu):
    """Seed every stream of this rank; returns DeepSpeed's RNG tracker (configured for our topology)."""
    import deepspeed
    from deepspeed import checkpointing as ds_ckpt
    if not deepspeed.comm.is_initialized():  # DeepSpeed >= 0.19's configure() asks its own comm for the rank
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    ds_ckpt.configure(mpu, partition_activations=False, contiguous_checkpointing=False, checkpoint_in_cpu=False)
    default = seed + 100 * pp_rank
    random.seed(default)
    np.random.seed(default % 2**32)
    torch.manual_seed(default)
    ds_ckpt.model_parallel_cuda_manual_seed(default)
    return ds_ckpt.get_cuda_rng_tracker()


def capture(device: torch.device, tracker=None) -> dict:
    """This rank's stream states, as tensors and plain values only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "device": dev.get_rng_state(device),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": py_gauss},
            "tracker": tracker.get_states() if tracker is not None else None}


def restore(state: dict, device: torch.device, tracker=None) -> None:
    torch.set_rng_state(state["torch"])
    dev.set_rng_state(state["device"], device)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))
    if tracker is not None and state.get("tracker") is not None:
        tracker.set_states(state["tracker"])


def save(path: str, state: dict) -> None:
    torch.save(state, path)


def load(path: str) -> dict:
    """A saved state; refuses anything but tensors and plain values (a crafted file cannot run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f"{path}: not a mot_parallel RNG state (it holds objects other than tensors and "
                           f"plain values, refused: {str(e).splitlines()[0]}); delete it only if you trust the "
                           "rest of this checkpoint, or resume from another one") from None


class RNGStreams:
    """This rank's streams as a stateful part for checkpoints."""

    def __init__(self, device: torch.device, tracker=None):
        self.device, self.tracker = device, tracker

    def state_dict(self) -> dict:
        return capture(self.device, self.tracker)

    def load_state_dict(self, state: dict) -> None:
        restore(state, self.device, self.tracker)
