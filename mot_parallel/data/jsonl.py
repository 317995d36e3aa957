"""JSONL documents -> validated segment arrays (used by tools/preprocess_data.py).

One document per line, either a list of segments or {"segments": [...]}, each segment
{"modality": <name>, "tokens": [ids...]}, or for a continuous modality (ImageSpec, image_specs.py)
{"modality": <name>, "image": "a.png"} or {"modality": <name>, "latents": "a.npy"} (paths relative to the
JSONL file's directory). Errors name the file, the line and the field (bytes that are not UTF-8, JSON that
is not a document, ids outside the vocabulary however large, a missing or unreadable image, latents of the
wrong shape or with NaN/inf, an image for a discrete modality)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .images import bad_values, patchify, pixels_to_unit, read_image, read_latents
from .indexed import DataError


class ImageToEncode(NamedTuple):
    """An image segment that the VAE encodes later, in the main process (batched): uint8 RGB [H, W, 3]."""
    pixels: np.ndarray
    where: str        # file:line
    field: str        # segments[i].image


def parse_document(line: Union[str, bytes], where: str, modalities: Sequence[str], vocab_size: int,
                   images: Optional[Dict[str, object]] = None, base_dir: str = "", marker_mode: Optional[int] = None
                   ) -> List[Tuple[Union[np.ndarray, ImageToEncode], int]]:
    """Validate one JSONL line (text, or bytes that must be UTF-8); return [(tokens int64, modality id)],
    with float32 patch rows [P, patch_dim] (or an ImageToEncode) for the continuous modalities in `images`
    ({name: ImageSpec}) and their BOI/EOI ids inserted as tokens of `marker_mode`; `where` is 'file:line'."""
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
    images = images or {}
    out = []
    for i, seg in enumerate(doc):
        field = f"segments[{i}]"
        kinds = [k for k in ("image", "latents") if isinstance(seg, dict) and k in seg]
        if isinstance(seg, dict) and "modality" in seg and kinds:
            out.append(_image_segment(seg, kinds, where, field, modalities, images, base_dir))
            continue
        if not isinstance(seg, dict) or "modality" not in seg or "tokens" not in seg:
            shape = '"tokens": [...]' + (' (or "image": file, "latents": file.npy)' if images else "")
            raise DataError(f"{where}: {field} must be {{\"modality\": name, {shape}}}, got {seg!r:.80}")
        name = seg["modality"]
        if name not in modalities:
            raise DataError(f"{where}: {field}.modality {name!r} is not one of {list(modalities)}")
        if name in images:
            raise DataError(f"{where}: {field}.tokens: modality {name!r} is continuous (patch vectors); give "
                            '{"image": file} or {"latents": file.npy}')
        toks = seg["tokens"]
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise DataError(f"{where}: {field}.tokens must be a list of integers")
        if not toks:
            raise DataError(f"{where}: {field}.tokens is empty")
        if min(toks) < 0 or max(toks) >= vocab_size:  # on Python ints: 10**30 cannot even become an int64
            j = next(j for j, t in enumerate(toks) if not 0 <= t < vocab_size)
            raise DataError(f"{where}: {field}.tokens[{j}]={toks[j]} is outside the vocabulary [0, {vocab_size})")
        out.append((np.asarray(toks, dtype=np.int64), modalities.index(name)))
    return _with_markers(out, images, modalities, marker_mode) if marker_mode is not None else out


def _image_segment(seg: dict, kinds: List[str], where: str, field: str, modalities: Sequence[str],
                   images: Dict[str, object], base_dir: str) -> Tuple[Union[np.ndarray, ImageToEncode], int]:
    """One image segment -> (patch rows, or an ImageToEncode for the VAE, modality id)."""
    name = seg["modality"]
    if name not in modalities:
        raise DataError(f"{where}: {field}.modality {name!r} is not one of {list(modalities)}")
    spec = images.get(name)
    if spec is None:
        raise DataError(f"{where}: {field}.{kinds[0]}: an image, but modality {name!r} is discrete (token ids); "
                        f"declare it continuous (--continuous {name}, or model.continuous.{name} in --config)")
    if len(kinds) > 1 or "tokens" in seg:
        raise DataError(f"{where}: {field} has {', '.join(k for k in ('tokens', 'image', 'latents') if k in seg)}; "
                        "give exactly one")
    kind, key = kinds[0], f"{field}.{kinds[0]}"
    value = seg[kind]
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key} must be a file path, got {value!r:.80}")
    path = os.path.join(base_dir, value)  # an absolute `value` stays as it is
    if not os.path.isfile(path):
        raise DataError(f"{where}: {key}: {path}: {'is a directory' if os.path.isdir(path) else 'file not found'}")
    mode = modalities.index(name)
    try:
        if kind == "latents":
            if spec.source != "latents":
                raise ValueError(f"modality {name!r} is stored as pixels (source pixels); give an \"image\" file")
            x = read_latents(path, spec.array_shape)
        elif spec.source == "latents" and not spec.encode:
            raise ValueError(f"modality {name!r} holds VAE latents: give --vae DIR to encode images, or "
                             "precomputed \"latents\"")
        else:
            rgb = read_image(path, spec.image_size)
            if spec.encode:
                return ImageToEncode(rgb, where, f"{key}: {path}"), mode
            x = pixels_to_unit(rgb)
        problem = bad_values(x, spec.dtype)
        if problem:
            raise ValueError(problem)
    except ValueError as e:
        raise DataError(f"{where}: {key}: {path}: {e}") from None
    return patchify(x, spec.patch).astype(np.float32), mode


def _with_markers(segments: list, images: Dict[str, object], modalities: Sequence[str], text: int) -> list:
    """BOI/EOI ids as `text` tokens around every image segment, merged into the neighbouring text segments
    (caption + [BOI] | patches | [EOI] + caption), as the demo corpus writes them."""
    out: list = []
    glue_next = False  # the last segment is an EOI marker: the next text segment joins it

    def add_tokens(ids: np.ndarray, glue: bool) -> None:
        if glue and out and out[-1][1] == text and isinstance(out[-1][0], np.ndarray) and out[-1][0].ndim == 1:
            out[-1] = (np.concatenate([out[-1][0], ids]), text)
        else:
            out.append((ids, text))

    for values, mode in segments:
        spec = images.get(modalities[mode])
        if spec is None:
            if mode == text:
                add_tokens(values, glue_next)
            else:
                out.append((values, mode))
            glue_next = False
            continue
        if spec.boi is not None:
            add_tokens(np.array([spec.boi], np.int64), glue=True)
        out.append((values, mode))
        glue_next = spec.eoi is not None
        if glue_next:
            add_tokens(np.array([spec.eoi], np.int64), glue=False)
    return out
