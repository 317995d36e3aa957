"""A corpus document decoded back into what it was made from, with nothing but the corpus and its sidecar.

    dec = CorpusDecoder("data/corpus")            # the sidecar names the tokenizer, the VQ or VAE, the layout
    for seg in dec.document(3): ...               # [{"modality", "ids", and "text" | "codes" | "patches" ...}]
    rgb = dec.picture(seg)                        # uint8 [H, W, 3] of an image segment, or None (codes only)

Text segments are decoded by the tokenizer recorded in the sidecar (its files' hash checked, or another path
given), with the structural ids the preprocessor added (the tokenizer's BOS at the document's start, EOD at its
end, BOI/EOI next to images) taken off into `marks`, so `text` is what the input said. A discrete image's ids,
less its range's first id, are its code grid (a VQ decodes them to pixels), a continuous image's patches are
decoded as the training model reads them (images.decode_patches), other discrete modalities keep their ids and
codes (speech units).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from ..data.continuous_store import open_continuous
from ..data.images import decode_patches
from ..data.indexed import SIDECAR, DataError, IndexedDataset
from ..data.text_tokenizer import load_tokenizer, tokenizer_from_record
from ..model.settings import ContinuousSpec
from . import image_tokenizer as vq_lib


class CorpusDecoder:
    def __init__(self, prefix: str, tokenizer: Optional[str] = None, image_tokenizer: Optional[str] = None,
                 vae: Optional[str] = None):
        self.ds = IndexedDataset(prefix)
        self.meta, self.where = self.ds.meta, prefix + SIDECAR
        self.names = list(self.meta.get("modalities") or ["text"])
        self.vq_dir, self.vae_dir = image_tokenizer, vae
        record = self.meta.get("tokenizer")
        self.tok = None
        if record is not None or tokenizer is not None:
            self.tok = tokenizer_from_record(record, self.where, tokenizer) if record is not None else \
                load_tokenizer(tokenizer)
        self.ranges = {n: tuple(r) for n, r in (self.meta.get("token_ranges") or {}).items()}
        self.codes = self.meta.get("image_codes") or {}
        self.continuous = self.meta.get("continuous") or {}
        self.markers = {n: (e.get("boi_token"), e.get("eoi_token")) for n, e in {**self.continuous, **self.codes}.items()}
        self.stores = {}
        if self.continuous:
            self.stores = {s.name: s for s in open_continuous(self.ds, self.names, dict(self.continuous)).values()}

    @property
    def num_docs(self) -> int:
        return self.ds.num_docs

    def document(self, doc: int) -> List[Dict]:
        if not 0 <= doc < self.ds.num_docs:
            raise DataError(f"{self.ds.prefix}: no document {doc}; it has {self.ds.num_docs} (0..{self.ds.num_docs - 1})")
        lengths, modes = self.ds.doc_segments(doc)
        modes = modes if modes is not None else np.zeros(len(lengths), np.int8)
        tokens = np.asarray(self.ds.doc_tokens(doc), np.int64)
        first_seg, pos, out = int(self.ds.doc_index[doc]), 0, []
        for k, (n, m) in enumerate(zip(lengths.tolist(), modes.tolist())):
            name = self.names[m] if m < len(self.names) else f"modality {m}"
            seg = {"modality": name, "length": n, "ids": tokens[pos:pos + n].tolist()}
            if name in self.stores:
                seg["patches"] = self.stores[name].rows(first_seg + k, 0, n)
            pos += n
            out.append(seg)
        for k, seg in enumerate(out):
            self._describe(out, k)
        return out

    def _describe(self, segs: List[Dict], k: int) -> None:
        seg, name = segs[k], segs[k]["modality"]
        ids = np.asarray(seg["ids"], np.int64)
        if name in self.codes:
            info = self.codes[name]
            codes = ids - int(info["first"])
            seg["codes"] = codes.reshape(info["grid"]).tolist() if info.get("grid") and \
                codes.size == int(np.prod(info["grid"])) else codes.tolist()
        elif name in self.ranges:
            seg["codes"] = (ids - self.ranges[name][0]).tolist()
        elif "patches" not in seg and self.tok is not None and name == self._text_modality():
            seg["marks"], body = self._strip(segs, k, ids.tolist())
            seg["text"] = self.tok.decode([i for i in body if i < self.tok.vocab_size])

    def _text_modality(self) -> str:
        return next((n for n in self.names if n not in self.continuous), self.names[0])

    def _strip(self, segs: List[Dict], k: int, ids: List[int]):
        """(marks, the text's own ids): BOS at the start, BOI before an image, EOI after one, EOD at the end."""
        special = (self.meta.get("tokenizer") or {}).get("special_ids") or {}
        prefix = list((self.meta.get("tokenizer") or {}).get("document_prefix") or [])
        suffix = list((self.meta.get("tokenizer") or {}).get("document_suffix") or [])
        eod = special.get("eod")
        head, tail = [], []
        if k == 0 and prefix and ids[:len(prefix)] == prefix:
            head, ids = ["<bos>"], ids[len(prefix):]
        before = self.markers.get(segs[k - 1]["modality"], (None, None))[1] if k > 0 else None
        if before is not None and ids[:1] == [before]:
            head, ids = head + ["<eoi>"], ids[1:]
        end = suffix + ([eod] if eod is not None and suffix[-1:] != [eod] else [])
        if k == len(segs) - 1 and end and ids[-len(end):] == end:
            tail, ids = ["<eod>"], ids[:-len(end)]
        after = self.markers.get(segs[k + 1]["modality"], (None, None))[0] if k + 1 < len(segs) else None
        if after is not None and ids[-1:] == [after]:
            tail, ids = ["<boi>"] + tail, ids[:-1]
        return {"before": head, "after": tail}, ids

    def picture(self, seg: Dict) -> Optional[np.ndarray]:
        """uint8 RGB [H, W, 3] of an image segment: a continuous one's patches, or a code grid through its VQ
        (the sidecar's, hash checked, or `image_tokenizer`); None for a code grid with no VQ to decode it."""
        name = seg["modality"]
        if "patches" in seg:
            info = self.continuous[name]
            spec = ContinuousSpec(name, info["channels"], info["patch"], tuple(info["grid"]), info["source"])
            return decode_patches(seg["patches"], spec, self.vae_dir or info.get("vae"))
        info = self.codes.get(name)
        if info is None or (info.get("vq") is None and self.vq_dir is None):
            return None
        path = os.path.abspath(self.vq_dir or info["vq"])
        if not os.path.isdir(path):
            raise DataError(f"{self.where}: image_codes.{name}.vq {path}: not found; give the VQ the corpus was "
                            "built with (--image-tokenizer DIR)")
        if vq_lib.vq_hash(path) != info.get("vq_sha256"):
            raise DataError(f"{self.where}: {path} is not the VQ the corpus was built with (sha256 differs); give "
                            "that one (--image-tokenizer DIR)")
        return vq_lib.decode_codes(vq_lib.cached_vq(path), np.asarray(seg["codes"])[None])[0]
