"""Records -> segments: Megatron-style --json-keys for JSONL objects, parquet rows and webdataset samples.

    --json-keys text                      # Megatron's default: the "text" field is the document
    --json-keys caption png,jpg:image     # a caption, then the picture in the png or else the jpg field

Each key is FIELD[:MODALITY]; FIELD may list alternatives separated by commas (the first one the record has is
used) and MODALITY defaults to the text modality (the first discrete one). The fields become the document's
segments in the order given. A value becomes a segment by its type: a string is text for the text modality and
a file path elsewhere (a .npy holds codes or latents, anything else is a picture); bytes are a file's contents (a
.npy's when they start with its magic string); {"bytes": ..., "path": ...} is a picture as Hugging Face datasets
store them in parquet; a list of integers is token ids for the text modality and codes elsewhere. A record that
lacks a field, or holds null or another type there, is refused naming the record and the field.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence

from ..data.indexed import DataError

NPY_MAGIC = b"\x93NUMPY"


class Field(NamedTuple):
    names: tuple          # alternatives, first present wins
    modality: str

    @property
    def label(self) -> str:
        return ",".join(self.names)


def parse_fields(keys: Optional[Sequence[str]], modalities: Sequence[str], text: Optional[str]) -> List[Field]:
    """--json-keys items -> Fields (default: Megatron's 'text'); DataError naming the bad item."""
    out = []
    for item in keys or ["text"]:
        names, colon, modality = item.partition(":")
        alternatives = tuple(n for n in names.split(","))
        if not names or not all(alternatives) or (colon and not modality):   # "text:" is a modality left out
            raise DataError(f"--json-keys {item}: expected FIELD[,FIELD...][:MODALITY]")
        modality = modality or text
        if modality not in modalities:
            raise DataError(f"--json-keys {item}: modality {modality!r} is not one of {list(modalities)}")
        out.append(Field(alternatives, modality))
    return out


def record_segments(record: dict, where: str, fields: Sequence[Field], kinds: Dict[str, str]) -> List[dict]:
    """The segments of a record; `kinds` maps a modality to 'text', 'codes', 'image' (a picture or codes: a VQ or
    a code grid), 'continuous' or 'tokens' (other discrete modalities without codes)."""
    segments = []
    for f in fields:
        name = next((n for n in f.names if n in record), None)
        if name is None:
            have = ", ".join(sorted(map(str, record))[:12]) or "none"
            raise DataError(f"{where}: no field {f.label!r} (it has: {have}); map fields with --json-keys, or give "
                            '{"segments": [...]}')
        segments.append(_segment(record[name], f.modality, kinds.get(f.modality, "tokens"), where, name))
    return segments


def _segment(value, modality: str, kind: str, where: str, name: str) -> dict:
    def refuse(what: str) -> DataError:
        return DataError(f"{where}: field {name!r} ({modality}): {what}, got {type(value).__name__} {value!r:.60}")

    if isinstance(value, dict) and ("bytes" in value or "path" in value):   # datasets' Image feature
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise DataError(f"{where}: field {name!r} is null; every record needs it (or map another field)")
    if isinstance(value, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise refuse("a list must hold integer ids")
        return {"modality": modality, "tokens" if kind in ("text", "tokens") else "codes": value}
    if isinstance(value, (bytes, bytearray)):
        if kind in ("text", "tokens"):
            raise refuse("a discrete modality takes text or ids, not file bytes")
        is_npy = bytes(value[:6]) == NPY_MAGIC
        return {"modality": modality, ("latents" if kind == "continuous" else "codes") if is_npy else "image": value}
    if isinstance(value, str):
        if kind == "text":
            return {"modality": modality, "text": value}
        if kind == "tokens":
            raise refuse("only the text modality takes text; give ids")
        npy = value.lower().endswith(".npy")
        return {"modality": modality, ("latents" if kind == "continuous" else "codes") if npy else "image": value}
    raise refuse("expected text, a file path, file bytes or a list of ids")
