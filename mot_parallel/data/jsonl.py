"""JSONL documents -> validated segment arrays (used by tools/preprocess_data.py).

One document per line, either a list of segments or {"segments": [...]}, each segment
{"modality": <name>, "tokens": [ids...]}. Errors name the file, the line and the field (bytes that are not
UTF-8, JSON that is not a document, ids outside the vocabulary however large)."""
from __future__ import annotations

import json
from typing import List, Sequence, Tuple, Union

import numpy as np

from .indexed import DataError


def parse_document(line: Union[str, bytes], where: str, modalities: Sequence[str], vocab_size: int
                   ) -> List[Tuple[np.ndarray, int]]:
    """Validate one JSONL line (text, or bytes that must be UTF-8); return [(tokens int64, modality id)];
    `where` is 'file:line'."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at column {e.start + 1}); "
                            "JSONL files are UTF-8") from None
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4,300 digits; nesting too deep
        raise DataError(f"{where}: not a document ({str(e) or type(e).__name__:.120})") from None
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
        if min(toks) < 0 or max(toks) >= vocab_size:  # on Python ints: 10**30 cannot even become an int64
            j = next(j for j, t in enumerate(toks) if not 0 <= t < vocab_size)
            raise DataError(f"{where}: {field}.tokens[{j}]={toks[j]} is outside the vocabulary [0, {vocab_size})")
        out.append((np.asarray(toks, dtype=np.int64), modalities.index(name)))
    return out
