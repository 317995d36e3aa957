"""The universal checkpoint: full, unsharded, layout-independent (any TP/PP/DP/ZeRO can read it).

    <dir>/universal.json       format, step, whether optimizer states are included, vocabulary sizes
    <dir>/config.yaml          the config that describes the model
    <dir>/state.json           training state: step, LR schedule, data loader position
    <dir>/index.json           tensor name -> shard file
    <dir>/model-*.safetensors  fp32 parameters under canonical names (embedding.*, layers.<i>.*, head.*)
    <dir>/optim-*.safetensors  fp32 Adam states, "<name>/exp_avg" and "<name>/exp_avg_sq"
Several ranks may write shards (one writer per pipeline stage); rank 0 then writes the index and the
metadata and renames the temporary directory into place, so a half-written checkpoint never appears.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import Config, dump_config, load_config
from ..outputs import MARKER, UNIVERSAL, fresh_staging, replace_dir, staging_dir as temp_dir
from .closed_files import CheckpointError, regular_files

FORMAT = "mot_parallel.universal/1"
SHARD_BYTES = 2 * 2**30


class ShardWriter:
    """Buffers tensors and writes <prefix>-<n>.safetensors files of about SHARD_BYTES each."""

    def __init__(self, directory: str, prefix: str):
        self.dir, self.prefix, self.n, self.buf, self.size = directory, prefix, 0, {}, 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.buf[name] = tensor.detach().to("cpu", torch.float32).contiguous()
        self.size += self.buf[name].numel() * 4
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            save_file(self.buf, os.path.join(self.dir, f"{self.prefix}-{self.n:05d}.safetensors"))
            self.n, self.buf, self.size = self.n + 1, {}, 0


def fresh_temp_dir(path: str, kind: str = UNIVERSAL) -> str:
    """An empty staging directory for `path`, marked as a `kind` (a leftover is removed only if ours)."""
    return fresh_staging(path, kind)


# the finished staging directory -> `path` (one rename); an existing `path` is replaced only if it is ours
move_into_place = replace_dir


def publish(path: str, cfg: Config, meta: Dict, state: Dict) -> None:
    """Rank 0, after every shard is written: index, metadata, then the atomic rename."""
    tmp, index = temp_dir(path), {}
    for f in sorted(os.listdir(tmp)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(tmp, f), "pt") as st:
                for k in st.keys():
                    index[k] = f
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f, indent=0)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f)
    dump_config(cfg, os.path.join(tmp, "config.yaml"))
    with open(os.path.join(tmp, "universal.json"), "w") as f:
        json.dump({"format": FORMAT, **meta}, f, indent=1)
    move_into_place(tmp, path)


def write_universal(path: str, cfg: Config, tensors: Iterable, meta: Dict, state: Dict) -> None:
    """Single-process writer: `tensors` yields (name, tensor) (names with '/' are optimizer states)."""
    tmp = fresh_temp_dir(path)
    model, optim = ShardWriter(tmp, "model"), ShardWriter(tmp, "optim")
    for name, t in tensors:
        (optim if "/" in name else model).add(name, t)
    model.flush()
    optim.flush()
    publish(path, cfg, meta, state)


def is_universal(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "universal.json"))


META_FILES = ("universal.json", "index.json", "state.json", "config.yaml")


def _read_json(path: str, what: type):
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(value, what):
        raise CheckpointError(f"{path}: expected a JSON {what.__name__}, got {type(value).__name__}")
    return value


def closed_file_set(path: str) -> Dict[str, str]:
    """The universal checkpoint at `path` as a closed set of regular files: its metadata files and the shards
    index.json names (tensor name -> shard), nothing else. A symbolic link anywhere, a shard named outside the
    directory, a missing file or a file nobody lists is a CheckpointError (the same rule as a training
    checkpoint's manifest): nothing is ever opened through a link or outside the checkpoint."""
    if os.path.islink(path) or not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (a symbolic link or a file where a universal checkpoint "
                              "should be)")
    files, bad = regular_files(path)
    bad += [f"{path}/{name}: missing" for name in META_FILES if name not in files]
    if bad:
        raise CheckpointError(f"{path}: not a usable universal checkpoint: " + "; ".join(bad[:3]))
    index = _read_json(os.path.join(path, "index.json"), dict)
    shards = set()
    for name, shard in index.items():
        if not isinstance(shard, str) or shard not in files or os.path.normpath(shard) != shard or \
                os.path.isabs(shard) or shard.startswith(".."):
            raise CheckpointError(f"{path}/index.json: tensor {name!r} is in {shard!r:.80}, not a file of the "
                                  "checkpoint; a universal checkpoint reads only its own files")
        shards.add(shard)
    strangers = sorted(set(files) - shards - set(META_FILES) - {MARKER})
    if strangers:
        raise CheckpointError(f"{path}/{strangers[0]}: not listed by the universal checkpoint (a stranger: remove "
                              "it, or convert the checkpoint again)")
    return index


class Universal:
    """Lazy reader of a universal checkpoint: only the files it lists (closed_file_set)."""

    def __init__(self, path: str):
        if not is_universal(path):
            raise FileNotFoundError(f"{path}: not a universal checkpoint (no universal.json)")
        self.path = path
        self.index = closed_file_set(path)
        self.meta = _read_json(os.path.join(path, "universal.json"), dict)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.state = _read_json(os.path.join(path, "state.json"), dict)
        self.config = load_config(os.path.join(path, "config.yaml"))
        self._open: Dict[str, object] = {}

    def names(self):
        return [k for k in self.index if "/" not in k]

    def get(self, name: str) -> torch.Tensor:
        if name not in self.index:
            raise KeyError(f"{self.path}: no tensor {name!r} (has {len(self.index)} tensors)")
        f = self.index[name]
        if f not in self._open:
            self._open[f] = safe_open(os.path.join(self.path, f), "pt")
        return self._open[f].get_tensor(name)

    def optimizer_state(self, name: str, key: str) -> Optional[torch.Tensor]:
        return self.get(f"{name}/{key}") if f"{name}/{key}" in self.index else None
