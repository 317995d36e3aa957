"""One input document -> validated (values, modality id) segments, as tools/preprocess_data.py writes them.

A document is a list of segments (or {"segments": [...]}, or a record mapped by --json-keys: fields.py), each
{"modality": name} plus exactly one of
    "tokens": [ids]            ids in the one vocabulary, as they are
    "text": "..."              the text modality only: encoded by --tokenizer (text_tokenizer.py)
    "codes": [c] or "a.npy"    a discrete modality's codes (a code grid, speech units), offset into its token
                               range (token_layout.py); an image's codes must form its grid
    "image": "a.png"           a continuous modality (patches: jsonl.py) or a discrete image with --image-tokenizer
                               (its VQ codes; the picture is encoded in the main process: ImageToEncode)
    "latents": "a.npy"         a continuous modality's precomputed latents
Paths are relative to the input file's directory; tar shards and parquet columns give the files' bytes instead.
Then BOI/EOI go around image segments, the tokenizer's template (BOS) before the document and EOD after it, all
as text tokens merged into the neighbouring text segments. Every error names the record and the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .fields import Field, record_segments
from .image_files import read_image, read_npy
from ..data.indexed import DataError
from .jsonl import ImageToEncode, decode_line, file_of, image_segment, with_markers
from .token_layout import TokenLayout

KINDS = ("tokens", "text", "codes", "image", "latents")


@dataclass
class DocumentParser:
    modalities: List[str]
    vocab_size: int
    layout: TokenLayout
    images: Dict[str, object] = field(default_factory=dict)    # continuous modalities: {name: ImageSpec}
    fields: Optional[Sequence[Field]] = None                  # record mapping (--json-keys)
    tokenizer: Optional[object] = None                        # TextTokenizer

    def __post_init__(self):
        self.markers = {self.modalities.index(n): (s.boi_token, s.eoi_token) for n, s in self.images.items()
                        if s.boi_token is not None or s.eoi_token is not None}
        self.markers.update({m: (s.boi_token, s.eoi_token) for m, s in self.layout.codes.items()
                             if s.boi_token is not None or s.eoi_token is not None})
        text = self.layout.text_mode
        self.kinds = {n: "continuous" if n in self.images else "text" if i == text else
                      "image" if i in self.layout.codes and self.layout.codes[i].grid else
                      "codes" if i in self.layout.codes else "tokens" for i, n in enumerate(self.modalities)}

    def parse(self, raw, where: str, base_dir: str = "") -> list:
        """raw: a JSONL line (bytes/str) or a record (dict: a parquet row, a tar sample)."""
        doc = decode_line(raw, where) if isinstance(raw, (bytes, str)) else raw
        if isinstance(doc, dict):
            doc = doc["segments"] if "segments" in doc else record_segments(doc, where, self.fields or [
                Field(("text",), self.modalities[self.layout.text_mode or 0])], self.kinds)
        if not isinstance(doc, list):
            raise DataError(f"{where}: a document is a list of segments, got {type(doc).__name__}")
        if not doc:
            raise DataError(f"{where}: empty document (no segments)")
        out = [self._segment(seg, f"segments[{i}]", where, base_dir) for i, seg in enumerate(doc)]
        if self.markers:
            out = with_markers(out, self.markers, self.layout.text_mode)
        return self._framed(out)

    def _segment(self, seg, field: str, where: str, base_dir: str):
        kinds = [k for k in KINDS if isinstance(seg, dict) and k in seg]
        if not isinstance(seg, dict) or "modality" not in seg or not kinds:
            raise DataError(f"{where}: {field} must be {{\"modality\": name, \"tokens\": [...]}} (or \"text\", "
                            f"\"codes\", \"image\", \"latents\"), got {seg!r:.80}")
        name = seg["modality"]
        if name not in self.modalities:
            raise DataError(f"{where}: {field}.modality {name!r} is not one of {self.modalities}")
        if len(kinds) > 1:
            raise DataError(f"{where}: {field} has {', '.join(kinds)}; give exactly one")
        kind, mode, key = kinds[0], self.modalities.index(name), f"{field}.{kinds[0]}"
        if name in self.images:
            if kind not in ("image", "latents"):
                raise DataError(f"{where}: {key}: modality {name!r} is continuous (patch vectors); give "
                                '{"image": file} or {"latents": file.npy}')
            return image_segment(dict(seg, _base_dir=base_dir), kind, where, field, mode, self.images[name])
        if kind == "tokens":
            return self._tokens(seg["tokens"], where, key), mode
        if kind == "text":
            return self._text(seg["text"], name, mode, where, key), mode
        spec = self.layout.codes.get(mode)
        if kind == "latents" or (kind == "image" and (spec is None or spec.grid is None)):
            raise DataError(f"{where}: {key}: an image, but modality {name!r} is discrete (token ids); declare it "
                            f"continuous (--continuous {name}, or model.continuous.{name} in --config) or give "
                            "--image-tokenizer DIR (a VQModel)")
        if spec is None:
            raise DataError(f"{where}: {key}: modality {name!r} has no code range; give --codebook-size {name}=K or "
                            "data.modality_token_ranges in --config")
        if kind == "image":
            if spec.vq is None:
                raise DataError(f"{where}: {key}: modality {name!r} takes precomputed codes here; give "
                                "--image-tokenizer DIR (a VQModel) to encode pictures")
            f, label = file_of(seg["image"], base_dir, where, key)
            try:
                return ImageToEncode(read_image(f, spec.image_size), where, label), mode
            except ValueError as e:
                raise DataError(f"{where}: {label}: {e}") from None
        return self._codes(seg["codes"], spec, where, key, base_dir), mode

    def _tokens(self, toks, where: str, key: str) -> np.ndarray:
        _check_ints(toks, where, key)
        if min(toks) < 0 or max(toks) >= self.vocab_size:  # on Python ints: 10**30 cannot even become an int64
            j = next(j for j, t in enumerate(toks) if not 0 <= t < self.vocab_size)
            raise DataError(f"{where}: {key}[{j}]={toks[j]} is outside the vocabulary [0, {self.vocab_size})")
        return np.asarray(toks, dtype=np.int64)

    def _text(self, text, name: str, mode: int, where: str, key: str) -> np.ndarray:
        if mode != self.layout.text_mode:
            raise DataError(f"{where}: {key}: modality {name!r} takes ids or codes; text is for "
                            f"{self.modalities[self.layout.text_mode]!r}, the tokenizer's modality")
        if self.tokenizer is None:
            raise DataError(f"{where}: {key}: text needs a tokenizer: give --tokenizer (a tokenizer.json or a "
                            "tokenizer directory)")
        if not isinstance(text, str):
            raise DataError(f"{where}: {key} must be a string, got {type(text).__name__}")
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        if not len(ids):
            raise DataError(f"{where}: {key} is empty (no tokens)")
        bad = self.layout.check_text_ids(ids)
        if bad is not None:
            raise DataError(f"{where}: {key}: the tokenizer gives id {bad}, inside {self.layout.code_owner(bad)!r}'s "
                            "token range; text and codes must not share ids (check data.modality_token_ranges)")
        return ids

    def _codes(self, value, spec, where: str, key: str, base_dir: str) -> np.ndarray:
        if isinstance(value, list):
            _check_ints(value, where, key)
            if min(value) < -2 ** 62 or max(value) > 2 ** 62:  # beyond int64: no codebook is that large
                raise DataError(f"{where}: {key}: code {max(value, key=abs)} is outside {spec.name}'s codebook "
                                f"[0, {spec.size})")
            codes = np.asarray(value, np.int64)
        else:
            f, label = file_of(value, base_dir, where, key)
            try:
                codes = read_npy(f)
            except ValueError as e:
                raise DataError(f"{where}: {label}: {e}") from None
            if not np.issubdtype(codes.dtype, np.integer):
                raise DataError(f"{where}: {label}: holds {codes.dtype} values; codes are integers")
            if spec.grid is not None and codes.ndim == 2 and tuple(codes.shape) != spec.grid:
                raise DataError(f"{where}: {label}: a {list(codes.shape)} code grid, expected {list(spec.grid)}")
        codes = np.asarray(codes, np.int64).reshape(-1)
        want = spec.grid[0] * spec.grid[1] if spec.grid else None
        if not len(codes) or (want is not None and len(codes) != want):
            raise DataError(f"{where}: {key}: {len(codes)} codes, expected {want or 'at least one'}"
                            f"{f' (a {spec.grid[0]}x{spec.grid[1]} grid)' if want else ''}")
        if codes.min() < 0 or codes.max() >= spec.size:
            j = int(np.flatnonzero((codes < 0) | (codes >= spec.size))[0])
            raise DataError(f"{where}: {key}: code {int(codes[j])} at {j} is outside {spec.name}'s codebook "
                            f"[0, {spec.size})")
        return codes + spec.first

    def _framed(self, out: list) -> list:
        """The tokenizer's template prefix before the document, its suffix and EOD after it (text tokens)."""
        text, lay = self.layout.text_mode, self.layout
        tail = list(lay.suffix) + ([lay.eod] if lay.eod is not None and lay.suffix[-1:] != [lay.eod] else [])
        is_text = (lambda k: out[k][1] == text and not isinstance(out[k][0], ImageToEncode) and out[k][0].ndim == 1)
        if lay.prefix:
            head = np.asarray(lay.prefix, np.int64)
            out[:1] = [(np.concatenate([head, out[0][0]]), text)] if is_text(0) else [(head, text), out[0]]
        if tail:
            end = np.asarray(tail, np.int64)
            out[-1:] = [(np.concatenate([out[-1][0], end]), text)] if is_text(-1) else [out[-1], (end, text)]
        return out


def _check_ints(values, where: str, key: str) -> None:
    if not isinstance(values, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in values):
        raise DataError(f"{where}: {key} must be a list of integers")
    if not values:
        raise DataError(f"{where}: {key} is empty")
