"""JSON documents and image segments -> validated segment arrays (used by mot_parallel/corpus_building/documents.py).

A JSONL line is one document: a list of segments, {"segments": [...]}, or a record of fields (--json-keys,
fields.py). `decode_line` turns the bytes into that object, naming file:line for bytes that are not UTF-8 and
JSON that is not a document. `image_segment` reads a continuous modality's picture or precomputed latents (a
path relative to the input's directory, or the bytes of a file, as tar shards and parquet columns hold them);
`with_markers` puts BOI/EOI ids around image segments."""
from __future__ import annotations

import io
import json
import os
from typing import Dict, NamedTuple, Tuple, Union

import numpy as np

from ..data.images import patchify, pixels_to_unit
from .image_files import bad_values, read_image, read_latents
from ..data.indexed import DataError


class ImageToEncode(NamedTuple):
    """An image segment that the VAE or the VQ encodes later, in the main process (batched): uint8 RGB [H, W, 3]."""
    pixels: np.ndarray
    where: str        # file:line, file: row N, shard: sample 'key'
    field: str        # segments[i].image


def decode_line(line: Union[str, bytes], where: str):
    """The JSON value of one line (text, or bytes that must be UTF-8); DataError naming `where`."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at column {e.start + 1}); "
                            "JSONL files are UTF-8") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of more than 4,300 digits; nesting too deep
        raise DataError(f"{where}: not a document ({str(e) or type(e).__name__:.120})") from None


def file_of(value, base_dir: str, where: str, key: str):
    """(a path, or a BytesIO of the file's bytes, and its label) of an image/latents/codes value."""
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value), f"{key} ({len(value)} bytes)"
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key} must be a file path, got {value!r:.80}")
    path = os.path.join(base_dir, value)  # an absolute `value` stays as it is
    if not os.path.isfile(path):
        raise DataError(f"{where}: {key}: {path}: {'is a directory' if os.path.isdir(path) else 'file not found'}")
    return path, f"{key}: {path}"


def image_segment(seg: dict, kind: str, where: str, field: str, mode: int, spec
                  ) -> Tuple[Union[np.ndarray, ImageToEncode], int]:
    """A continuous modality's segment -> (patch rows, or an ImageToEncode for the VAE, modality id)."""
    name, base_dir = seg["modality"], seg.get("_base_dir", "")
    f, label = file_of(seg[kind], base_dir, where, f"{field}.{kind}")
    try:
        if kind == "latents":
            if spec.source != "latents":
                raise ValueError(f"modality {name!r} is stored as pixels (source pixels); give an \"image\" file")
            x = read_latents(f, spec.array_shape)
        elif spec.source == "latents" and not spec.encode:
            raise ValueError(f"modality {name!r} holds VAE latents: give --vae DIR to encode images, or "
                             "precomputed \"latents\"")
        else:
            rgb = read_image(f, spec.image_size)
            if spec.encode:
                return ImageToEncode(rgb, where, label), mode
            x = pixels_to_unit(rgb)
        problem = bad_values(x, spec.dtype)
        if problem:
            raise ValueError(problem)
    except ValueError as e:
        raise DataError(f"{where}: {label}: {e}") from None
    return patchify(x, spec.patch).astype(np.float32), mode


def with_markers(segments: list, markers: Dict[int, Tuple[object, object]], text: int) -> list:
    """BOI/EOI ids ({image modality id: (boi, eoi)}, either may be None) as `text` tokens around every segment of
    those modalities, merged into the neighbouring text segments (caption + [BOI] | image | [EOI] + caption), as
    the demo corpus writes them."""
    out: list = []
    glue_next = False  # the last segment is an EOI marker: the next text segment joins it

    def add_tokens(ids: np.ndarray, glue: bool) -> None:
        if glue and out and out[-1][1] == text and isinstance(out[-1][0], np.ndarray) and out[-1][0].ndim == 1:
            out[-1] = (np.concatenate([out[-1][0], ids]), text)
        else:
            out.append((ids, text))

    for values, mode in segments:
        if mode not in markers:
            if mode == text:
                add_tokens(values, glue_next)
            else:
                out.append((values, mode))
            glue_next = False
            continue
        boi, eoi = markers[mode]
        if boi is not None:
            add_tokens(np.array([boi], np.int64), glue=True)
        out.append((values, mode))
        glue_next = eoi is not None
        if glue_next:
            add_tokens(np.array([eoi], np.int64), glue=False)
    return out
