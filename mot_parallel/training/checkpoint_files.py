"""What a complete checkpoint is, and which one a run resumes from.

    <checkpoint.dir>/step_00000120/checkpoint.json   the manifest, written last inside the staging directory:
        {"format", "step", "layout": {tp, pp, dp, zero_stage}, "model": {architecture settings},
         "files": {relative path: {"bytes", "sha256", "rank": the rank that wrote it}}}

A checkpoint is a closed set of regular files named by its manifest. It is complete when the manifest
parses and names its own step, and the step directory holds exactly the files it lists, each of the
listed size: nothing missing (a truncated shard, a lost RNG file), no stranger (a file the manifest does
not list), no symbolic link, FIFO or device anywhere below the step directory (entries are read with
lstat, never followed, so no file's real path can leave it), and an RNG file for every rank of the
recorded layout. All of this reads only file metadata, so it runs before any process group exists;
contents are checked against the hashes when the checkpoint is loaded (checkpoint_hashes.py).
`latest` is only a hint: resume takes the newest step directory (resume.py).

Tags are step_<step, 8 digits or more>: step 10^8 and later get 9 digits, and resume and pruning still see
them; a tag with extra leading zeros is not ours and is ignored.

DeepSpeed reads its own files with torch.load(weights_only=False); `unsafe_pickles` scans every listed file
first (the pickle opcodes only, no tensor data is read) and refuses any object but the few plain DeepSpeed
records its checkpoints hold, so a crafted file cannot run code on resume, whatever its name or directory.

Manifests of format 1 (sizes only: no hashes, no model record) are still read: resume accepts them with a
warning that says what cannot be checked (resume.py).
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Tuple

from ..config.parallel_layout import ParallelLayout
from ..convert.closed_files import CheckpointError, regular_files  # noqa: F401 (re-exported: one name for users)

MANIFEST = "checkpoint.json"
FORMAT = "mot_parallel.checkpoint/2"
FORMAT_1 = "mot_parallel.checkpoint/1"   # sizes only (earlier releases): read, never written
STEP_DIR = re.compile(r"^step_(\d{8,})$")
# objects DeepSpeed 0.19 pickles into its checkpoints besides tensors and plain values (fields only)
DEEPSPEED_RECORDS = {"deepspeed.utils.tensor_fragment.fragment_address",
                     "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.checkpoint.constants.UniversalCheckpointInfo"}


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(name: str) -> Optional[int]:
    """The step of a tag this project writes (`tag_for`), else None."""
    m = STEP_DIR.match(name)
    return int(m.group(1)) if m and tag_for(int(m.group(1))) == name else None


def rng_file(rank: int) -> str:
    return f"rng_rank_{rank}.pt"


def layout_record(layout: ParallelLayout) -> Dict[str, int]:
    return {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "zero_stage": layout.zero_stage}


def write_manifest(path: str, step: int, layout: ParallelLayout, model: dict, files: Dict[str, dict]) -> None:
    """Record `files` (relative path -> {"bytes", "sha256", "rank"}: every file under `path`, the finished
    staging directory), the layout and the model settings."""
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "step": step, "layout": layout_record(layout), "model": model, "files": files},
                  f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))


def step_dirs(directory: str) -> List[Tuple[int, str]]:
    """(step, tag) of every step_* entry (directory or not: `problems` says what is wrong), oldest first."""
    if not os.path.isdir(directory):
        return []
    return sorted((s, name) for name in os.listdir(directory) if (s := step_of(name)) is not None)


def listed_files(meta: dict) -> Dict[str, int]:
    """relative path -> bytes, from a manifest of either format."""
    return {rel: (v if isinstance(v, int) else v["bytes"]) for rel, v in meta["files"].items()}


def problems(path: str) -> List[str]:
    """Why `path` is not a complete checkpoint ([] when it is)."""
    manifest = os.path.join(path, MANIFEST)
    if os.path.islink(path) or not os.path.isdir(path):
        return [f"{path}: not a directory (a symbolic link or a file where a checkpoint should be)"]
    try:
        with open(manifest) as f:
            meta = json.load(f)
        listed, step = listed_files(meta), int(meta["step"])
    except FileNotFoundError:
        return [f"{manifest}: missing (an interrupted save, or not written by mot_parallel)"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{manifest}: unreadable ({type(e).__name__}: {e})"]
    out = []
    if meta.get("format") not in (FORMAT, FORMAT_1) or step_of(os.path.basename(path.rstrip("/"))) != step:
        out.append(f"{manifest}: format {meta.get('format')!r} / step {step} do not match {FORMAT!r} and the directory")
    found, out_bad = regular_files(path)
    out += out_bad
    found.pop(MANIFEST, None)
    for rel in sorted(set(listed) | set(found)):
        full = os.path.join(path, rel)
        if rel not in found:
            out.append(f"{full}: missing" if _inside(rel) else f"{manifest}: entry {rel!r} is not a path inside "
                       "the checkpoint")
        elif rel not in listed:
            out.append(f"{full}: not listed in the manifest (a stranger: remove it, or resume another checkpoint)")
        elif found[rel] != listed[rel]:
            out.append(f"{full}: {found[rel]} bytes, the manifest says {listed[rel]} (truncated or overwritten)")
    try:
        world = int(meta["layout"]["tp"]) * int(meta["layout"]["pp"]) * int(meta["layout"]["dp"])
    except (KeyError, TypeError, ValueError):
        return out + [f"{manifest}: no readable layout record"]
    if world > len(listed):  # (a garbled layout must not make this loop for ever)
        return out + [f"{manifest}: lists {len(listed)} files, fewer than the {world} RNG files of its layout"]
    return out + [f"{os.path.join(path, rng_file(r))}: not in the manifest, but every rank of its layout writes "
                  "one (an entry removed with its file?)" for r in range(world) if rng_file(r) not in listed]


def _inside(rel: str) -> bool:
    return rel == os.path.normpath(rel) and not os.path.isabs(rel) and not rel.startswith("..") and rel != "."


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
    """'<file>: <global>' for every object a listed file of the checkpoint at `path` would build besides
    tensors, plain values and DeepSpeed's own records (torch's weights_only allow-list plus DEEPSPEED_RECORDS).
    Every listed file is scanned, whatever its name: DeepSpeed's loaders (the universal one included) pick
    files by patterns of their own. A file torch cannot read as a checkpoint is reported too."""
    from torch.serialization import get_unsafe_globals_in_checkpoint
    out = []
    for rel in sorted(listed_files(read_manifest(path))):
        full = os.path.join(path, rel)
        try:
            found = get_unsafe_globals_in_checkpoint(full)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not loaded
            out.append(f"{full}: unreadable as a torch checkpoint ({type(e).__name__}: {e})")
            continue
        out += [f"{full}: {g}" for g in found if g not in DEEPSPEED_RECORDS]
    return out
