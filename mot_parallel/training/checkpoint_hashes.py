"""Content hashes of checkpoint files, and the closed set DeepSpeed may load from.

Save: DeepSpeed writes every file of a checkpoint through its checkpoint engine (`engine.checkpoint_engine`:
model states, ZeRO optimizer shards, pipeline layer files); `FileGuard` wraps that engine, so the rank
that wrote a file hashes it (SHA-256) right after writing it, from the page cache, in parallel with every
other rank hashing its own files. Rank 0 gathers the records into the manifest. (Hashing the bytes as they
are written instead would need torch.save to write into a Python file object, which writes different
archive names and was no faster; tools/bench_checkpoint_hash.py measures the cost.)
Resume: before DeepSpeed reads anything, every rank checks an equal share of the listed files against
their hashes (`verify_share`: largest first, each to the least loaded rank, the same split on every
rank), so a file copied in from another checkpoint, or changed since, is refused by name. While DeepSpeed
loads, `FileGuard` refuses any path the manifest does not list (a file removed together with its manifest
entry is named instead of skipped or read from elsewhere). SHA-256 digests are what `sha256sum` prints.
"""
from __future__ import annotations

import hashlib
import heapq
import os
from typing import Dict, List, Optional

from .checkpoint_files import CheckpointError


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_record(path: str, rank: Optional[int]) -> dict:
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path), "rank": rank}


class FileGuard:
    """DeepSpeed's checkpoint engine (anything with save(state, path) / load(path, map_location)) with two
    duties added: `written` records every file saved (path -> file_record), and while `allowed` is set
    (the real paths a manifest lists) a load of any other path raises CheckpointError."""

    def __init__(self, inner, rank: int):
        self.inner, self.rank = inner, rank
        self.written: Dict[str, dict] = {}
        self.allowed: Optional[set] = None

    def __getattr__(self, name):  # everything else is DeepSpeed's engine's own
        return getattr(self.inner, name)

    def save(self, state_dict, path: str):
        result = self.inner.save(state_dict, path)
        self.written[os.path.abspath(path)] = file_record(path, self.rank)
        return result

    def load(self, path: str, map_location=None):
        if self.allowed is not None and os.path.realpath(path) not in self.allowed:
            raise CheckpointError(f"{path}: DeepSpeed needs this file, but the checkpoint's manifest does not list "
                                  "it (a file removed together with its manifest entry, or a path outside the "
                                  "checkpoint); resume another checkpoint")
        return self.inner.load(path, map_location=map_location)

    def take_written(self, directory: str) -> Dict[str, dict]:
        """The records of files saved under `directory`, by path relative to it (forgotten here)."""
        root = os.path.abspath(directory) + os.sep
        out = {os.path.relpath(p, root): r for p, r in self.written.items() if p.startswith(root)}
        self.written = {p: r for p, r in self.written.items() if not p.startswith(root)}
        return out


def assign(sizes: Dict[str, int], world: int) -> Dict[str, int]:
    """file -> the rank that verifies it: largest first, each to the least loaded rank (ties: lower rank);
    every rank computes the same split from the manifest."""
    loads = [(0, r) for r in range(world)]
    out = {}
    for rel, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        load, r = heapq.heappop(loads)
        out[rel] = r
        heapq.heappush(loads, (load + size, r))
    return out


def verify_share(path: str, files: Dict[str, dict], rank: int, world: int) -> List[str]:
    """What is wrong with this rank's share of the listed files ({rel: {"bytes", "sha256"}}) of `path`."""
    out = []
    mine = [rel for rel, r in assign({rel: v["bytes"] for rel, v in files.items()}, world).items() if r == rank]
    for rel in mine:
        full = os.path.join(path, rel)
        try:
            digest = sha256_file(full)
        except OSError as e:
            out.append(f"{full}: unreadable ({e.strerror})")
            continue
        if digest != files[rel].get("sha256"):
            out.append(f"{full}: its content differs from the manifest's SHA-256 (a file copied in from another "
                       "checkpoint, or changed since it was written)")
    return out
