"""What a complete checkpoint is, and which one a run resumes from.

    <checkpoint.dir>/step_00000120/checkpoint.json   the manifest, written last inside the staging directory:
        {"format", "step", "layout": {tp, pp, dp, zero_stage}, "files": {relative path: bytes}}

A checkpoint directory is complete when its manifest parses, names its own step and every file it lists
exists with exactly the listed size (a truncated shard or a missing RNG file fails here, naming the
file). `latest` is only a hint: resume takes the newest step directory, and refuses, with the reason and
the fix, when that one is not complete (falling back to the previous complete one only when
`checkpoint.on_corrupt=previous` asks for it), when it was written by another layout (pointing at
tools/convert_checkpoint.py reshard), or when resuming would let this run overwrite a newer checkpoint
it did not load. All of this reads only file metadata, so it runs before any process group exists.

DeepSpeed reads its own files with torch.load(weights_only=False); `unsafe_pickles` scans them first
(the pickle opcodes only, no tensor data is read) and refuses any object but the few plain DeepSpeed
records its checkpoints hold, so a crafted file cannot run code on resume.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Tuple

from ..config.layout import ParallelLayout

MANIFEST = "checkpoint.json"
FORMAT = "mot_parallel.checkpoint/1"
STEP_DIR = re.compile(r"^step_(\d{8})$")
# objects DeepSpeed 0.19 pickles into its checkpoints besides tensors and plain values (fields only)
DEEPSPEED_RECORDS = {"deepspeed.utils.tensor_fragment.fragment_address",
                     "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.checkpoint.constants.UniversalCheckpointInfo"}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used as asked; the message names the path and the fix."""


def layout_record(layout: ParallelLayout) -> Dict[str, int]:
    return {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "zero_stage": layout.zero_stage}


def write_manifest(path: str, step: int, layout: ParallelLayout) -> None:
    """Record every file under `path` (the finished staging directory) with its size."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            files[os.path.relpath(full, path)] = os.path.getsize(full)
    files.pop(MANIFEST, None)
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "step": step, "layout": layout_record(layout), "files": files}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))


def step_dirs(directory: str) -> List[Tuple[int, str]]:
    """(step, tag) of every step_* directory, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(directory) if (m := STEP_DIR.match(name))
             and os.path.isdir(os.path.join(directory, name))]
    return sorted(found)


def problems(path: str) -> List[str]:
    """Why `path` is not a complete checkpoint ([] when it is)."""
    manifest = os.path.join(path, MANIFEST)
    try:
        with open(manifest) as f:
            meta = json.load(f)
        files, step = meta["files"], int(meta["step"])
    except FileNotFoundError:
        return [f"{manifest}: missing (an interrupted save, or not written by mot_parallel)"]
    except (ValueError, KeyError, TypeError) as e:
        return [f"{manifest}: unreadable ({e})"]
    out = []
    m = STEP_DIR.match(os.path.basename(path.rstrip("/")))
    if meta.get("format") != FORMAT or (m and int(m.group(1)) != step):
        out.append(f"{manifest}: format {meta.get('format')!r} / step {step} do not match {FORMAT!r} and the directory")
    for rel, size in sorted(files.items()):
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            out.append(f"{full}: missing")
        elif os.path.getsize(full) != size:
            out.append(f"{full}: {os.path.getsize(full)} bytes, the manifest says {size} (truncated or overwritten)")
    return out


def read_manifest(path: str) -> dict:
    with open(os.path.join(path, MANIFEST)) as f:
        return json.load(f)


def layout_problem(path: str, layout: ParallelLayout) -> Optional[str]:
    """A message when the checkpoint at `path` was written by another layout (DeepSpeed loads only its own)."""
    saved, now = read_manifest(path)["layout"], layout_record(layout)
    if saved == now:
        return None
    return (f"{path} was written by layout {saved}, this run is {now}; DeepSpeed cannot load another layout's "
            f"shards. Convert it (the tool reads the source layout from the checkpoint): python "
            f"tools/convert_checkpoint.py reshard --config <your config> --checkpoint {path} --dst "
            f"{layout_overrides(now)} --run-dir <new run dir>, then resume from <new run dir>/checkpoints")


def layout_overrides(rec: Dict[str, int]) -> str:
    """Config overrides giving a layout record's TP, PP and ZeRO stage (DP follows from the world size)."""
    return (f"parallel.tensor_parallel={rec['tp']} parallel.pipeline_parallel={rec['pp']} "
            f"parallel.zero_stage={rec['zero_stage']}")


def unsafe_pickles(path: str) -> List[str]:
    """'<file>: <global>' for every object a *.pt file under `path` would build besides tensors, plain
    values and DeepSpeed's own records (torch's weights_only allow-list plus DEEPSPEED_RECORDS)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint
    out = []
    for root, _, names in os.walk(path):
        for name in sorted(n for n in names if n.endswith(".pt")):
            full = os.path.join(root, name)
            try:
                found = get_unsafe_globals_in_checkpoint(full)
            except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not loaded
                out.append(f"{full}: unreadable as a torch checkpoint ({e})")
                continue
            out += [f"{full}: {g}" for g in found if g not in DEEPSPEED_RECORDS]
    return out
