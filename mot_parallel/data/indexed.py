"""Megatron-compatible indexed datasets (<prefix>.bin / <prefix>.idx), memory-mapped.

Layout of the .idx (Megatron-Core's `IndexedDataset`, little-endian):
    b"MMIDIDX\\x00\\x00" | version u64 = 1 | dtype code u8 | sequence count u64 | document count u64
    | sequence lengths i32[S] | sequence byte offsets i64[S] | document indices i64[D]  (D = docs + 1)
    | [sequence modes i8[S]   only in `multimodal` datasets]
The .bin holds the tokens of all sequences back to back.

MoT corpora written by mot_parallel are `multimodal`: every *segment* of a document is one Megatron
"sequence" and its mode is the modality id, so megatron-core reads them with
`IndexedDataset(prefix, multimodal=True)`. A sidecar <prefix>.mot.json records the modality names.
Plain (non-multimodal) Megatron corpora work too; modalities then come from token-id ranges.

Writes are atomic: temp files are renamed into place, the .idx last, so a crash never leaves a
dataset that looks valid. Opening validates the index structure (document boundaries, segment lengths
and offsets, modes; vectorised) and the .bin size against it (a truncated .bin fails with the file, the
expected and actual sizes and the first document affected). Token ids are checked against the model's
vocabulary once per corpus by data/token_ids.py.
"""
from __future__ import annotations

import json
import os
import re
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..outputs import check_corpus, new_file
from .data_error import DataError
from .sidecar import check_against_index, read_sidecar

HEADER = b"MMIDIDX\x00\x00"
_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
          np.uint16: 8}
_DTYPES = {v: k for k, v in _CODES.items()}
SIDECAR = ".mot.json"


def token_dtype(vocab_size: int):
    """Megatron's rule: uint16 below 65500 ids, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def _as_tokens(tokens, dtype, doc: int) -> np.ndarray:
    """Tokens as the corpus dtype; ids the dtype cannot hold are refused (a cast would wrap them silently)."""
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"document {doc}: a segment's tokens must be a 1-D sequence of integer ids")
    info = np.iinfo(dtype)
    if arr.size and (int(arr.min()) < info.min or int(arr.max()) > info.max):
        raise DataError(f"document {doc}: token ids {int(arr.min())}..{int(arr.max())} do not fit the corpus "
                        f"dtype {np.dtype(dtype).name} [{info.min}, {info.max}]; use token_dtype(vocab_size)")
    if arr.size >= 2 ** 31:
        raise DataError(f"document {doc}: a segment of {arr.size} tokens exceeds the index's int32 lengths")
    return arr.astype(dtype, copy=False)


def _missing_dirs(path: str) -> List[str]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    out = []
    while path and not os.path.exists(path):
        out.append(path)
        path = os.path.dirname(path)
    return out


def _replaced_only(prefix: str, extra: Sequence[str]) -> List[str]:
    """The files of the corpus an overwrite replaces that the new one will not have: the patches of continuous
    modalities its sidecar declares and the new corpus lacks, with their finiteness stamps (continuous_store.py).
    Left beside the new corpus, they would look like part of it."""
    try:
        declared = read_sidecar(prefix + SIDECAR).get("continuous") or {}
    except DataError:   # not a sidecar of ours: check_corpus has refused to replace it already
        return []
    # a modality name, never a path: a sidecar that says "../x" must not make this remove a file elsewhere
    exts = [f".{name}.patches" for name in declared
            if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]+", name) and f".{name}.patches" not in extra]
    return [prefix + ext + tail for ext in exts for tail in ("", ".checked")]


class IndexedWriter:
    """Stream documents into <prefix>.bin/.idx; `close()` publishes atomically, errors leave nothing.
    An existing corpus at `prefix` is replaced only with `overwrite` and only if this project wrote it
    (mot_parallel/outputs.py; `extra`: more suffixes the corpus consists of)."""

    def __init__(self, prefix: str, dtype=np.uint16, multimodal: bool = True, overwrite: bool = False,
                 extra: Sequence[str] = ()):
        check_corpus("output prefix", prefix, overwrite=overwrite, extra=extra)
        self._stale = _replaced_only(prefix, extra) if overwrite else []   # removed by close()
        self.prefix, self.dtype, self.multimodal = prefix, np.dtype(dtype).type, multimodal
        self._made = _missing_dirs(os.path.dirname(os.path.abspath(prefix)))  # removed again by abort()
        os.makedirs(os.path.dirname(os.path.abspath(prefix)) or ".", exist_ok=True)
        self._tmp = f".tmp.{os.getpid()}"
        self._bin = new_file(prefix + ".bin" + self._tmp)
        self.lengths: List[int] = []
        self.modes: List[int] = []
        self.doc_index: List[int] = [0]

    def add_document(self, segments: Sequence[Tuple[np.ndarray, int]]) -> None:
        """segments: (tokens, mode) pairs of one document, in order."""
        for tokens, mode in segments:
            arr = _as_tokens(tokens, self.dtype, len(self.doc_index) - 1)
            if not 0 <= int(mode) <= 127:  # stored as int8; a negative or wrapped mode would corrupt the index
                raise DataError(f"document {len(self.doc_index) - 1}: modality id {mode} must be in [0, 127]")
            self._bin.write(arr.tobytes(order="C"))
            self.lengths.append(int(arr.size))
            self.modes.append(int(mode))
        self.doc_index.append(len(self.lengths))

    def close(self, meta: Optional[Dict] = None) -> None:
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        itemsize = np.dtype(self.dtype).itemsize
        lengths = np.asarray(self.lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * itemsize
        with new_file(self.prefix + ".idx" + self._tmp) as f:
            f.write(HEADER)
            f.write(struct.pack("<Q", 1))
            f.write(struct.pack("<B", _CODES[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(self.doc_index)))
            f.write(lengths.tobytes())
            f.write(pointers.tobytes())
            f.write(np.asarray(self.doc_index, dtype=np.int64).tobytes())
            if self.multimodal:
                f.write(np.asarray(self.modes, dtype=np.int8).tobytes())
            f.flush()
            os.fsync(f.fileno())
        if meta is not None:
            with new_file(self.prefix + SIDECAR + self._tmp, "w") as f:
                json.dump(meta, f, indent=1)
            os.replace(self.prefix + SIDECAR + self._tmp, self.prefix + SIDECAR)
        os.replace(self.prefix + ".bin" + self._tmp, self.prefix + ".bin")
        os.replace(self.prefix + ".idx" + self._tmp, self.prefix + ".idx")  # last: the dataset now exists
        for path in self._stale:
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)

    def abort(self) -> None:
        self._bin.close()
        for ext in (".bin", ".idx", SIDECAR):
            try:
                os.remove(self.prefix + ext + self._tmp)
            except FileNotFoundError:
                pass
        for d in self._made:  # the directories this writer created, deepest first, if nothing else is in them
            try:
                os.rmdir(d)
            except OSError:
                break

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


class IndexedDataset:
    """Read-only, memory-mapped view; nothing is loaded into RAM beyond the index arrays' pages.

    Opening validates the whole index structure (vectorised, in bounded chunks): document boundaries run
    from 0 to the segment count without going back, segment lengths are >= 0, segments lie back to back
    in the .bin, modes are >= 0, and the .bin has exactly the size the index describes. Each error names
    the file, the segment and the document."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        idx_path, bin_path = prefix + ".idx", prefix + ".bin"
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise DataError(f"{path}: not found (a dataset is <prefix>.bin + <prefix>.idx; "
                                "build one with tools/preprocess_data.py)")
        with open(idx_path, "rb") as f:
            head = f.read(34)
        if len(head) < 34 or head[:9] != HEADER or struct.unpack("<Q", head[9:17])[0] != 1:
            raise DataError(f"{idx_path}: not a Megatron indexed dataset index (bad header)")
        code = head[17]
        if code not in _DTYPES:
            raise DataError(f"{idx_path}: unknown token dtype code {code}")
        self.dtype = _DTYPES[code]
        if not np.issubdtype(self.dtype, np.integer):
            raise DataError(f"{idx_path}: token dtype {np.dtype(self.dtype).name}: token ids must be integers")
        n_seq, n_doc = struct.unpack("<QQ", head[18:34])
        base = 34 + n_seq * 4 + n_seq * 8 + n_doc * 8
        size = os.path.getsize(idx_path)
        if size not in (base, base + n_seq):
            raise DataError(f"{idx_path}: {size} bytes, but its header describes {base} (or {base + n_seq} "
                            "with modes): the index is truncated or corrupt")
        self.multimodal = size == base + n_seq and n_seq > 0
        idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self.lengths = np.frombuffer(idx, dtype=np.int32, count=n_seq, offset=34)
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=n_seq, offset=34 + n_seq * 4)
        self.doc_index = np.frombuffer(idx, dtype=np.int64, count=n_doc, offset=34 + n_seq * 12)
        self.modes = (np.frombuffer(idx, dtype=np.int8, count=n_seq, offset=base) if self.multimodal else None)
        _check_index(self, idx_path)
        itemsize = np.dtype(self.dtype).itemsize
        expected = int(self.lengths.sum(dtype=np.int64)) * itemsize
        actual = os.path.getsize(bin_path)
        if actual != expected:
            seq = int(np.searchsorted(self.pointers + self.lengths.astype(np.int64) * itemsize, actual, "right"))
            doc = int(np.searchsorted(self.doc_index, seq, "right")) - 1
            raise DataError(f"{bin_path}: {actual} bytes but {idx_path} describes {expected} "
                            f"({'truncated' if actual < expected else 'trailing bytes'}; first document "
                            f"affected: {max(doc, 0)} of {self.num_docs}); rebuild it with tools/preprocess_data.py")
        self._bin = np.memmap(bin_path, mode="r", dtype=self.dtype) if expected else np.zeros(0, self.dtype)
        self.meta = read_sidecar(prefix + SIDECAR)
        check_against_index(self.meta, self, prefix + SIDECAR)

    def stamp(self) -> np.ndarray:
        """Identifies the files' current contents (size, modification time, inode of .bin and .idx): caches
        derived from the corpus store it and are rebuilt when it changes."""
        st = [os.stat(self.prefix + ext) for ext in (".bin", ".idx")]
        return np.array([v % (1 << 63) for s in st for v in (s.st_size, s.st_mtime_ns, s.st_ino)], dtype=np.int64)

    def document_of(self, segment: int) -> int:
        """The document holding segment `segment` (the index must have passed `_check_index`)."""
        return int(np.searchsorted(self.doc_index, segment, "right")) - 1

    @property
    def num_docs(self) -> int:
        return len(self.doc_index) - 1

    def doc_segments(self, doc: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(segment lengths, segment modes or None) of one document."""
        a, b = int(self.doc_index[doc]), int(self.doc_index[doc + 1])
        return self.lengths[a:b], (self.modes[a:b] if self.modes is not None else None)

    def doc_tokens(self, doc: int, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """Tokens [start, end) of a document (a view into the memory map, no copy)."""
        first, last = int(self.doc_index[doc]), int(self.doc_index[doc + 1])
        if first == last:
            return self._bin[:0]
        offset = int(self.pointers[first]) // np.dtype(self.dtype).itemsize
        n = int(self.lengths[first:last].sum())
        end = n if end is None else end
        return self._bin[offset + start: offset + end]


_CHUNK = 1 << 22  # index entries per vectorised pass: bounded temporaries on indexes of any size


def _check_index(ds: IndexedDataset, path: str) -> None:
    """Raise DataError naming the first structural fault of the index (see IndexedDataset)."""
    fix = "the index is corrupt; rebuild the corpus with tools/preprocess_data.py"
    d, n_seq = ds.doc_index, len(ds.lengths)
    if len(d) == 0 or d[0] != 0 or d[-1] != n_seq:
        ends = f"runs from {d[0]} to {d[-1]}" if len(d) else "is empty"
        raise DataError(f"{path}: the document index {ends}, but must run from 0 to the segment count {n_seq}; {fix}")
    for a in range(0, len(d) - 1, _CHUNK):
        back = np.flatnonzero(np.diff(d[a: a + _CHUNK + 1]) < 0)
        if len(back):
            doc = a + int(back[0])
            raise DataError(f"{path}: the document index goes backwards at document {doc} (it starts at segment "
                            f"{int(d[doc])} and ends at {int(d[doc + 1])}); {fix}")
    offset, itemsize = 0, np.dtype(ds.dtype).itemsize
    for a in range(0, n_seq, _CHUNK):
        lengths = ds.lengths[a: a + _CHUNK].astype(np.int64)
        neg = np.flatnonzero(lengths < 0)
        if len(neg):
            seg = a + int(neg[0])
            raise DataError(f"{path}: segment {seg} (document {ds.document_of(seg)}) has length "
                            f"{int(lengths[neg[0]])}; {fix}")
        starts = offset + np.concatenate([[0], np.cumsum(lengths[:-1])]) * itemsize
        moved = np.flatnonzero(ds.pointers[a: a + _CHUNK] != starts)
        if len(moved):
            seg = a + int(moved[0])
            raise DataError(f"{path}: segment {seg} (document {ds.document_of(seg)}) starts at byte "
                            f"{int(ds.pointers[seg])} of the .bin, but segments lie back to back, so it must start at "
                            f"{int(starts[moved[0]])}; {fix}")
        offset += int(lengths.sum()) * itemsize
        if ds.modes is not None:
            bad = np.flatnonzero(ds.modes[a: a + _CHUNK] < 0)
            if len(bad):
                seg = a + int(bad[0])
                raise DataError(f"{path}: segment {seg} (document {ds.document_of(seg)}) has modality id "
                                f"{int(ds.modes[seg])}; ids are 0, 1, ... in model.modalities order; {fix}")
