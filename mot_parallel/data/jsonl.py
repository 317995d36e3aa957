"""JSONL documents -> validated segment arrays (used by tools/preprocess_data.py).

One document per line, either a list of segments or {"segments": [...]}, each segment
{"modality": <name>, "tokens": [ids...]}. Errors name the file, the line and the field."""
from __future__ import annotations

import json
from typing import List, Sequence, Tuple

import numpy as np

from .indexed import DataError


def parse_document(line: str, where: str, modalities: Sequence[str], vocab_size: int
                   ) -> List[Tuple[np.ndarray, int]]:
    """Validate one JSONL line; return [(tokens int64, modality id)]; `where` is 'file:line'."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(doc, dict):
        if "segments" not in doc:
            raise DataError(f"{where}: object without a 'segments' field (got keys {sorted(doc)})")
        doc = doc["segments"]
    if not isinstance(doc, list):
        raise DataError(f"{where}: a document is a list of segments, got {type(doc).__name__}")
    if not doc:
        raise DataError(f"{where}: empty document (no segments)")
    out = []
    for i, seg in enumerate(doc):
        field = f"segments[{i}]"
        if not isinstance(seg, dict) or "modality" not in seg or "tokens" not in seg:
            raise DataError(f"{where}: {field} must be {{\"modality\": name, \"tokens\": [...]}}, got {seg!r:.80}")
        name = seg["modality"]
        if name not in modalities:
            raise DataError(f"{where}: {field}.modality {name!r} is not one of {list(modalities)}")
        toks = seg["tokens"]
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise DataError(f"{where}: {field}.tokens must be a list of integers")
        if not toks:
            raise DataError(f"{where}: {field}.tokens is empty")
        arr = np.asarray(toks, dtype=np.int64)
        bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
        if len(bad):
            j = int(bad[0])
            raise DataError(f"{where}: {field}.tokens[{j}]={int(arr[j])} is outside the vocabulary [0, {vocab_size})")
        out.append((arr, modalities.index(name)))
    return out
