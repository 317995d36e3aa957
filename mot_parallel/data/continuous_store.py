"""Continuous segments (the Transfusion setting): images as patch vectors, stored beside the token corpus.

On disk, a continuous segment of P patches is an ordinary segment of P placeholder tokens (id 0) in
<prefix>.bin/.idx, with its modality id as mode, so megatron-core's IndexedDataset still reads the corpus;
its values live in one file per continuous modality, rows in segment order:

    <prefix>.<modality>.patches    float16 or float32 rows [sum of that modality's segment lengths, patch_dim]
    <prefix>.mot.json              "format": "mot_parallel/2", "continuous": {modality: {"patch_dim", "dtype",
                                   "rows", "channels", "patch", "grid", "source"}}

A segment's first row is the number of rows of that modality's earlier segments (computed once, vectorised).
Opening checks the file against the index (rows, size, patch_dim), the sidecar against the model (a modality
continuous in one and discrete in the other is refused by name) and every value once (no NaN/inf; cached
next to the file): a DataError names the file, the document and the fix, before training.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..outputs import OutputError, new_file
from .indexed import SIDECAR, DataError, IndexedDataset, IndexedWriter

FORMAT = "mot_parallel/2"
DTYPES = {"float16": np.float16, "float32": np.float32}


def patches_path(prefix: str, modality: str) -> str:
    return f"{prefix}.{modality}.patches"


class ContinuousWriter:
    """IndexedWriter plus the patch files: add_document takes (tokens, mode) for discrete segments and
    (float array [P, patch_dim], mode) for continuous ones (modes listed in `continuous`)."""

    def __init__(self, prefix: str, token_dtype, continuous: Dict[int, Tuple[str, dict]], dtype: str = "float16",
                 overwrite: bool = False):
        self.tokens = IndexedWriter(prefix, token_dtype, multimodal=True, overwrite=overwrite,
                                    extra=[f".{name}.patches" for name, _ in continuous.values()])
        self.prefix, self.continuous, self.dtype = prefix, continuous, dtype
        self._files = {}
        try:
            for m, (name, _) in continuous.items():
                self._files[m] = new_file(patches_path(prefix, name) + f".tmp.{os.getpid()}")
        except OutputError:
            self.abort()
            raise
        self.rows = {m: 0 for m in continuous}

    def add_document(self, segments: Sequence[Tuple[np.ndarray, int]]) -> None:
        out = []
        for values, mode in segments:
            if mode in self.continuous:
                values = np.asarray(values, dtype=np.float32)
                dim = self.continuous[mode][1]["patch_dim"]
                with np.errstate(over="ignore"):  # checked after the cast: 1e5 is inf in float16
                    stored = values.astype(DTYPES[self.dtype])
                if values.ndim != 2 or values.shape[1] != dim or not np.isfinite(stored).all():
                    raise DataError(f"{self.prefix}: a {self.continuous[mode][0]} segment must be [patches, {dim}] "
                                    f"values finite in {self.dtype}, got {values.shape}")
                self._files[mode].write(stored.tobytes())
                self.rows[mode] += len(values)
                out.append((np.zeros(len(values), np.int64), mode))
            else:
                out.append((values, mode))
        self.tokens.add_document(out)

    def close(self, meta: dict) -> None:
        cont = {}
        for m, (name, info) in self.continuous.items():
            self._files[m].close()
            os.replace(self._files[m].name, patches_path(self.prefix, name))
            cont[name] = dict(info, dtype=self.dtype, rows=self.rows[m])
        self.tokens.close(dict(meta, format=FORMAT, continuous=cont))

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
            if os.path.exists(f.name):
                os.remove(f.name)
        self.tokens.abort()


class ContinuousStore:
    """One continuous modality's patches, memory-mapped, addressed by segment."""

    def __init__(self, ds: IndexedDataset, name: str, mode: int, info: dict, model: Union[None, int, dict]):
        path = patches_path(ds.prefix, name)
        self.name, self.path = name, path
        self.dim = int(info.get("patch_dim", -1))
        _check_layout(ds, name, info, {"patch_dim": model} if isinstance(model, int) else model or {})
        dtype = DTYPES.get(info.get("dtype"))
        if dtype is None or not os.path.isfile(path):
            raise DataError(f"{path}: missing, or an unknown dtype {info.get('dtype')!r} in {ds.prefix}{SIDECAR} "
                            "(rebuild the corpus with tools/preprocess_data.py)")
        mine = ds.modes == mode
        lengths = np.where(mine, ds.lengths, 0).astype(np.int64)
        self.first_row = np.cumsum(lengths) - lengths           # per segment (meaningful where mine)
        rows = int(lengths.sum())
        size = os.path.getsize(path)
        if rows != int(info.get("rows", -1)) or size != rows * self.dim * np.dtype(dtype).itemsize:
            raise DataError(f"{path}: {size} bytes, but {ds.prefix}.idx has {rows} {name} patches of {self.dim} "
                            f"{np.dtype(dtype).name} values (the sidecar says {info.get('rows')} rows): the files do "
                            "not belong together; rebuild the corpus")
        self.values = np.memmap(path, mode="r", dtype=dtype, shape=(rows, self.dim)) if rows else \
            np.zeros((0, self.dim), dtype)
        _check_finite(self, ds, mine)

    def rows(self, segment: int, start: int, end: int) -> np.ndarray:
        """Rows [start, end) of a segment, float32 [end - start, dim]."""
        first = int(self.first_row[segment])
        return np.asarray(self.values[first + start:first + end], dtype=np.float32)


def _check_layout(ds: IndexedDataset, name: str, info: dict, model: dict) -> None:
    """The corpus's patches laid out as the model reads them: the same vector size, and where the sidecar records
    them the same channels, patch side, grid and source (a 4x4x3 corpus fits a 2x2x12 model's vector size but
    not its meaning)."""
    if "patch_dim" in model and int(info.get("patch_dim", -1)) != model["patch_dim"]:
        raise DataError(f"{ds.prefix}{SIDECAR}: {name} patches have {info.get('patch_dim')} values, but "
                        f"model.continuous.{name} gives channels x patch^2 = {model['patch_dim']}; fix the config "
                        "or re-encode the corpus")
    for key in ("channels", "patch", "grid", "source"):
        mine, theirs = info.get(key), model.get(key)
        if mine is not None and theirs is not None and \
                (list(mine) if isinstance(mine, (list, tuple)) else mine) != \
                (list(theirs) if isinstance(theirs, (list, tuple)) else theirs):
            raise DataError(f"{ds.prefix}{SIDECAR}: {name} was encoded with {key}={mine!r}, but "
                            f"model.continuous.{name}.{key} is {theirs!r}; fix the config or re-encode the corpus")


def _check_finite(store: ContinuousStore, ds: IndexedDataset, mine: np.ndarray) -> None:
    """Every value finite; scanned once per file version (cached next to it)."""
    stamp = f"{os.path.getsize(store.path)}:{os.stat(store.path).st_mtime_ns}:{os.stat(store.path).st_ino}"
    cache = store.path + ".checked"
    try:
        with open(cache) as f:
            if f.read() == stamp:
                return
    except OSError:
        pass
    for lo in range(0, len(store.values), 1 << 20):
        chunk = np.asarray(store.values[lo:lo + (1 << 20)], dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if len(bad):
            row = lo + int(bad[0])
            seg = int(np.flatnonzero(mine & (store.first_row <= row))[-1])
            raise DataError(f"{store.path}: row {row} (document {ds.document_of(seg)}, segment {seg}) holds NaN or "
                            "inf; re-encode that image (tools/preprocess_data.py refuses such values)")
    try:
        with open(cache + f".tmp.{os.getpid()}", "w") as f:
            f.write(stamp)
        os.replace(cache + f".tmp.{os.getpid()}", cache)
    except OSError:  # a read-only corpus directory: check again next time
        pass


def open_continuous(ds: IndexedDataset, names: List[str],
                    model_continuous: Dict[str, Union[int, dict]]) -> Dict[int, ContinuousStore]:
    """The corpus's continuous stores keyed by its own mode ids; `model_continuous`: {modality: patch_dim, or a
    dict of patch_dim/channels/patch/grid/source} of the model. Refuses a modality continuous in one and discrete in the other."""
    declared = ds.meta.get("continuous") or {}
    prefix = ds.prefix
    for name in declared:
        if name in names and name not in model_continuous:
            raise DataError(f"{prefix}{SIDECAR}: {name} is continuous (patch vectors) in this corpus but discrete in "
                            f"the model; declare it under model.continuous, or use a corpus of {name} tokens")
    for name in model_continuous:
        if name in names and name not in declared and (ds.modes == names.index(name)).any():
            raise DataError(f"{prefix}{SIDECAR}: {name} is discrete (token ids) in this corpus but model.continuous "
                            f"declares it continuous; encode its images as patches (tools/preprocess_data.py)")
    if declared and ds.meta.get("format") != FORMAT:
        raise DataError(f"{prefix}{SIDECAR}: format {ds.meta.get('format')!r} with continuous segments; expected "
                        f"{FORMAT!r} (rebuild the corpus)")
    return {names.index(n): ContinuousStore(ds, n, names.index(n), info, model_continuous.get(n))
            for n, info in declared.items() if n in names}

