"""The corpus sidecar (<prefix>.mot.json), read as a typed record and checked against the index it describes.

The sidecar says what the index's modality ids mean, so a wrong one trains silently on the wrong modalities (a
sidecar listing [text, text, speech] read every image segment as text). Every field is optional (a corpus may
have no sidecar, or an older one); a field that is present must have its type:

    format               str                      "mot_parallel/<n>"
    modalities           [str, ...]               unique names; id i in the index is modalities[i]
    vocab_size           int > 0
    documents, tokens    int >= 0                 equal to the index's documents and tokens
    tokens_per_modality  {name: int >= 0}         names among `modalities`; equal to the index's count per id
    token_ranges         {name: [int, int]}
    continuous           {name: {patch_dim, rows, channels, patch: int > 0, grid: [int, int], source, dtype, vae,
                                 image_size: [int, int] | null, boi_token, eoi_token: int >= 0 | null}}
    image_codes          {name: {first: int >= 0, codebook_size: int > 0, grid, image_size: [int, int] | null,
                                 vq, vq_sha256: str | null, boi_token, eoi_token: int >= 0 | null}}
    tokenizer            {path: str, name, library, sha256: str, vocab_size: int > 0,
                          special_ids: {str: int >= 0 | null}, document_prefix, document_suffix: [int >= 0]}
    source, written_by   str                      written_by: the writer (mot_parallel/outputs.py CORPUS_*)
    sources              [str] or {str: ...}
Other keys are kept and ignored (a newer writer may add some). Errors are DataErrors naming the file, the field
and the fix; the counts are compared in one vectorised pass over the index (bounded chunks).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np

from .data_error import DataError

_FIX = "rebuild the corpus with tools/preprocess_data.py"
_CHUNK = 1 << 22


def _count(value: Any, positive: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) and n for n in value)


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_count(v, positive=True) for v in value)


def _field_problem(where: str, info: Dict, key: str, kind: str) -> str:
    """'' if info[key] (when present) is of `kind`: count, positive, pair, pair|null, str|null, id|null, ids."""
    if key not in info:
        return ""
    value = info[key]
    ok = {"count": _count(value), "positive": _count(value, positive=True), "pair": _pair(value),
          "pair|null": value is None or _pair(value), "str|null": value is None or isinstance(value, str),
          "id|null": value is None or _count(value), "ids": isinstance(value, list) and all(map(_count, value))}[kind]
    wanted = {"count": "an integer >= 0", "positive": "a positive integer", "pair": "[rows, cols] of positive "
              "integers", "pair|null": "[rows, cols] of positive integers or null", "str|null": "a string or null",
              "id|null": "a token id (an integer >= 0) or null", "ids": "a list of token ids"}[kind]
    return "" if ok else f"{where}.{key} must be {wanted}, got {value!r:.60}"


_CONTINUOUS = {"patch_dim": "positive", "channels": "positive", "patch": "positive", "rows": "count", "grid": "pair",
               "source": "str|null", "dtype": "str|null", "vae": "str|null", "image_size": "pair|null",
               "boi_token": "id|null", "eoi_token": "id|null"}
_IMAGE_CODES = {"first": "count", "codebook_size": "positive", "grid": "pair|null", "image_size": "pair|null",
                "vq": "str|null", "vq_sha256": "str|null", "boi_token": "id|null", "eoi_token": "id|null"}
_TOKENIZER = {"path": "str|null", "name": "str|null", "library": "str|null", "sha256": "str|null",
              "vocab_size": "positive", "document_prefix": "ids", "document_suffix": "ids"}


def _record_problem(where: str, info: Any, fields: Dict[str, str]) -> str:
    """The first field of an object entry (continuous.<m>, image_codes.<m>, tokenizer) not of its type."""
    if not isinstance(info, dict):
        return f"{where} must be an object, got {info!r:.60}"
    for key, kind in fields.items():
        problem = _field_problem(where, info, key, kind)
        if problem:
            return problem
    return ""


def _tokenizer_problem(record: Any) -> str:
    problem = _record_problem("tokenizer", record, _TOKENIZER)
    if problem or "special_ids" not in record:
        return problem
    special = record["special_ids"]
    if not isinstance(special, dict):
        return f"tokenizer.special_ids must be an object, got {special!r:.60}"
    return next((p for k in special if (p := _field_problem("tokenizer.special_ids", special, k, "id|null"))), "")


def schema_problem(meta: Dict) -> str:
    """The first field of `meta` that does not have its type ('' when all do)."""
    names = meta.get("modalities")
    if names is not None:
        if not _names(names):
            return f"'modalities' must be a list of names, got {names!r:.80}"
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            return (f"'modalities' {names} lists {twice} more than once, so two modality ids would read as one "
                    "modality; each modality is listed once, in the order of the ids in the index")
    for key in ("vocab_size",):
        if key in meta and not _count(meta[key], positive=True):
            return f"'{key}' must be a positive integer, got {meta[key]!r:.80}"
    for key in ("documents", "tokens"):
        if key in meta and not _count(meta[key]):
            return f"'{key}' must be an integer >= 0, got {meta[key]!r:.80}"
    for key in ("format", "source", "written_by"):
        if key in meta and not isinstance(meta[key], str):
            return f"'{key}' must be a string, got {meta[key]!r:.80}"
    per = meta.get("tokens_per_modality")
    if per is not None and not (isinstance(per, dict) and all(_count(v) for v in per.values())):
        return f"'tokens_per_modality' must map names to integers >= 0, got {per!r:.80}"
    for key in ("tokens_per_modality", "continuous", "token_ranges", "image_codes"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"'{key}' must be an object keyed by modality, got {value!r:.80}"
        strangers = [n for n in value if names is not None and n not in names]
        if strangers:
            return f"'{key}' names {strangers}, which 'modalities' {names} lacks"
    for key, fields in (("continuous", _CONTINUOUS), ("image_codes", _IMAGE_CODES)):
        for name, info in (meta.get(key) or {}).items():
            problem = _record_problem(f"{key}.{name}", info, fields)
            if problem:
                return problem
    for name, lo_hi in (meta.get("token_ranges") or {}).items():
        if not (isinstance(lo_hi, list) and len(lo_hi) == 2 and all(_count(v) for v in lo_hi) and lo_hi[0] < lo_hi[1]):
            return f"token_ranges.{name} must be [first, end) integers with first < end, got {lo_hi!r:.60}"
    if meta.get("tokenizer") is not None:
        problem = _tokenizer_problem(meta["tokenizer"])
        if problem:
            return problem
    if meta.get("sources") is not None and not isinstance(meta["sources"], (list, dict)):
        return f"'sources' must be a list or an object, got {meta['sources']!r:.80}"
    return ""


def read_sidecar(path: str) -> Dict:
    """The <prefix>.mot.json record ({} when absent), its fields type-checked (DataError otherwise)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, and bytes that are not UTF-8
        raise DataError(f"{path}: unreadable sidecar ({e}); {_FIX}, or delete the file to use the corpus without "
                        "it") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: the sidecar must be a JSON object, got {type(meta).__name__}")
    problem = schema_problem(meta)
    if problem:
        raise DataError(f"{path}: {problem}; {_FIX}")
    return meta


def check_against_index(meta: Dict, ds, path: str) -> None:
    """The sidecar's counts are the index's: documents, tokens, ids below the number of modalities, and the tokens
    of each modality id (which catches a sidecar that names the ids in another order)."""
    if "documents" in meta and meta["documents"] != ds.num_docs:
        raise DataError(f"{path}: says {meta['documents']} documents, but the index has {ds.num_docs}: the sidecar "
                        f"belongs to another corpus; {_FIX}")
    names, per = meta.get("modalities"), meta.get("tokens_per_modality")
    if "tokens" not in meta and not (ds.multimodal and names is not None):
        return
    counts = _tokens_per_id(ds, max(len(names or ()), 1) if ds.multimodal else 1)
    if "tokens" in meta and meta["tokens"] != int(counts.sum()):
        raise DataError(f"{path}: says {meta['tokens']} tokens, but the index holds {int(counts.sum())}: the sidecar "
                        f"belongs to another corpus; {_FIX}")
    if not ds.multimodal or names is None:
        return
    if len(counts) > len(names):
        seg = int(np.flatnonzero(ds.modes >= len(names))[0])
        raise DataError(f"{ds.prefix}.idx: segment {seg} (document {ds.document_of(seg)}) has modality id "
                        f"{int(ds.modes[seg])}, but {path} names only {len(names)} modalities {names}")
    for i, name in enumerate(names):
        if per is not None and name in per and per[name] != int(counts[i]):
            raise DataError(f"{path}: says {per[name]} {name} tokens, but the index holds {int(counts[i])} tokens "
                            f"of id {i} ('modalities'[{i}] = {name!r}): the names do not match the ids; {_FIX}")


def _tokens_per_id(ds, at_least: int) -> np.ndarray:
    """Tokens per modality id (all under id 0 for a corpus without modes), in bounded chunks."""
    if ds.modes is None:
        return np.array([int(ds.lengths.sum(dtype=np.int64))], dtype=np.int64)
    out = np.zeros(at_least, dtype=np.int64)
    for a in range(0, len(ds.lengths), _CHUNK):
        modes = ds.modes[a: a + _CHUNK]
        part = np.bincount(modes.astype(np.int64), weights=ds.lengths[a: a + _CHUNK], minlength=len(out))
        if len(part) > len(out):
            out = np.concatenate([out, np.zeros(len(part) - len(out), dtype=np.int64)])
        out += np.rint(part).astype(np.int64)
    return out
