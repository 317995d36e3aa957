"""A corpus for MoT training: an indexed dataset plus, for every document, its modality segments.

Segments come from the dataset itself (multimodal datasets: one Megatron "sequence" per segment with
its mode) or, for plain token corpora (Chameleon style: one vocabulary, image codes in an id range),
from `data.modality_token_ranges`: tokens outside every declared range belong to modality 0. The
derived segments are computed once and cached next to the dataset, atomically, keyed on the corpus files
(`IndexedDataset.stamp`: a changed or replaced corpus is derived again), so planning never reads tokens:
every rank can plan the whole global batch from metadata alone and then read only its own share.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .continuous_store import ContinuousStore, open_continuous
from .indexed import DataError, IndexedDataset
from .targets import target_counts
from .token_ids import check_corpus_token_ids


class SegmentTable:
    """Per-document modality segments (lengths, modality ids) and the queries packing needs.

    Works from metadata only; `Corpus` adds the tokens. `from_profiles` builds one from length profiles
    (tools/balance_report.py --docs), with no tokens at all."""

    def __init__(self, seg_len: np.ndarray, seg_mode: np.ndarray, doc_seg: np.ndarray, modalities: Sequence[str],
                 atomic: Sequence[str] = (), prefix: str = "<profiles>", continuous: Sequence[str] = ()):
        self.seg_len, self.seg_mode, self.doc_seg = seg_len, seg_mode, doc_seg
        self.modalities, self.prefix = list(modalities), prefix
        self.atomic = np.array([m in atomic or m in continuous for m in modalities], dtype=bool)
        self.continuous = np.array([m in continuous for m in modalities], dtype=bool)
        self.doc_len = np.zeros(len(doc_seg) - 1, dtype=np.int64)
        if len(seg_len):
            nonempty = doc_seg[1:] > doc_seg[:-1]
            self.doc_len[nonempty] = np.add.reduceat(seg_len.astype(np.int64), doc_seg[:-1][nonempty])

    @classmethod
    def from_profiles(cls, docs: Sequence[Sequence[Tuple[str, int]]], modalities: Sequence[str],
                      atomic: Sequence[str] = ()) -> "SegmentTable":
        """docs: per document a list of (modality name, length) segments."""
        seg_len, seg_mode, doc_seg = [], [], [0]
        for d, doc in enumerate(docs):
            for name, n in doc:
                if name not in modalities:
                    raise DataError(f"document {d}: modality {name!r} is not one of {list(modalities)}")
                seg_len.append(int(n))
                seg_mode.append(list(modalities).index(name))
            doc_seg.append(len(seg_len))
        return cls(np.asarray(seg_len, np.int32), np.asarray(seg_mode, np.int8), np.asarray(doc_seg, np.int64),
                   modalities, atomic)

    @property
    def num_docs(self) -> int:
        return len(self.doc_seg) - 1

    def segments(self, doc: int) -> Tuple[np.ndarray, np.ndarray]:
        a, b = int(self.doc_seg[doc]), int(self.doc_seg[doc + 1])
        return self.seg_len[a:b], self.seg_mode[a:b]

    def vector(self, doc: int, start: int, end: int) -> np.ndarray:
        """Tokens per modality in [start, end) of a document."""
        out = np.zeros(len(self.modalities), dtype=np.int64)
        pos = 0
        for n, m in zip(*self.segments(doc)):
            lo, hi = max(start, pos), min(end, pos + int(n))
            if hi > lo:
                out[m] += hi - lo
            pos += int(n)
            if pos >= end:
                break
        return out

    def modality_ids(self, doc: int, start: int, end: int) -> np.ndarray:
        """[end - start] modality id of every position of [start, end) of a document."""
        lens, modes = self.segments(doc)
        ends = np.cumsum(lens.astype(np.int64))
        starts = ends - lens
        k0, k1 = int(np.searchsorted(ends, start, side="right")), int(np.searchsorted(starts, end, side="left"))
        clipped = np.minimum(ends[k0:k1], end) - np.maximum(starts[k0:k1], start)
        return np.repeat(modes[k0:k1].astype(np.int64), clipped)

    def target_vector(self, doc: int, start: int, end: int) -> np.ndarray:
        """[M] training targets per modality in [start, end) of a document (targets.py)."""
        if not self.continuous.any():
            return self.vector(doc, start + 1, end)
        return target_counts(self.modality_ids(doc, start, end), self.continuous)

    def atomic_spans(self, doc: int, start: int, end: int) -> List[Tuple[int, int]]:
        """[a, b) spans of atomic segments (never cut by packing) overlapping [start, end)."""
        spans, pos = [], 0
        for n, m in zip(*self.segments(doc)):
            if self.atomic[m] and pos < end and pos + n > start:
                spans.append((pos, pos + int(n)))
            pos += int(n)
        return spans


class Corpus(SegmentTable):
    """A SegmentTable over an indexed dataset, plus token reads.

    Opening checks that the corpus fits the model: the sidecar's modalities and vocabulary, every segment's
    modality id, and (`check_ids`, cached per corpus: token_ids.py) every token id against `vocab_size`."""

    def __init__(self, prefix: str, modalities: Sequence[str], vocab_size: int,
                 token_ranges: Optional[Dict[str, List[int]]] = None, atomic: Sequence[str] = (),
                 check_ids: bool = True, continuous: Optional[Dict[str, Union[int, dict]]] = None):
        self.ds = IndexedDataset(prefix)
        self.prefix, self.modalities, self.vocab_size = prefix, list(modalities), vocab_size
        check_fits(self.ds, self.modalities, vocab_size, bool(token_ranges))
        if vocab_size and check_ids:
            check_corpus_token_ids(self.ds, vocab_size)
        if self.ds.multimodal and not token_ranges:
            self.seg_len, self.doc_seg = self.ds.lengths, self.ds.doc_index
            self.seg_mode = self._model_modes(self.ds.meta.get("modalities"))
        else:
            self.seg_len, self.seg_mode, self.doc_seg = self._segments_from_ranges(token_ranges or {})
        names = list(self.ds.meta.get("modalities") or self.modalities)
        self.stores: Dict[str, ContinuousStore] = {
            store.name: store for store in open_continuous(self.ds, names, continuous or {}).values()}
        super().__init__(self.seg_len, self.seg_mode, self.doc_seg, modalities, atomic, prefix, list(continuous or ()))

    # ------------------------------------------------------------------------------------- segments
    def _model_modes(self, names: Optional[Sequence[str]]) -> np.ndarray:
        """The segments' modality ids in the model's numbering (check_fits has refused names the model lacks
        and ids beyond the names): a corpus may list a subset of the model's modalities, in any order."""
        modes = self.ds.modes
        if names is None or list(names) == self.modalities:
            return modes
        lut = np.array([self.modalities.index(n) for n in names], dtype=np.int8)
        return lut[modes]

    def _segments_from_ranges(self, ranges: Dict[str, List[int]]):
        key = hashlib.sha1(json.dumps([self.modalities, sorted(ranges.items())]).encode()).hexdigest()[:12]
        cache, stamp = f"{self.prefix}.mot_runs.{key}.npz", self.ds.stamp()
        try:  # valid only for the very files it was derived from (a corpus copied over keeps old mtimes)
            with np.load(cache) as z:
                if np.array_equal(z["stamp"], stamp):
                    return z["seg_len"], z["seg_mode"], z["doc_seg"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
        lut_hi = max([hi for _, hi in ranges.values()] + [self.vocab_size, 1])
        lut = np.zeros(lut_hi, dtype=np.int8)
        for name, (lo, hi) in ranges.items():
            lut[lo:hi] = self.modalities.index(name)
        seg_len, seg_mode, doc_seg = [], [], [0]
        for d in range(self.ds.num_docs):
            toks = np.asarray(self.ds.doc_tokens(d))
            if len(toks) and (int(toks.max()) >= lut_hi or int(toks.min()) < 0):
                raise DataError(f"{self.prefix}.bin: document {d} has token ids {int(toks.min())}..{int(toks.max())}, "
                                f"outside the vocabulary [0, {lut_hi}); check model.vocab_size")
            modes = lut[toks]
            starts = np.flatnonzero(np.r_[True, modes[1:] != modes[:-1]]) if len(modes) else np.zeros(0, int)
            lens = np.diff(np.r_[starts, len(modes)])
            seg_len.extend(lens.tolist())
            seg_mode.extend(modes[starts].tolist())
            doc_seg.append(len(seg_len))
        out = (np.asarray(seg_len, np.int32), np.asarray(seg_mode, np.int8), np.asarray(doc_seg, np.int64))
        tmp = f"{cache}.tmp.{os.getpid()}.npz"
        try:
            np.savez(tmp, seg_len=out[0], seg_mode=out[1], doc_seg=out[2], stamp=stamp)
            os.replace(tmp, cache)
        except OSError:  # a read-only corpus directory: correct, only not cached
            if os.path.exists(tmp):
                os.remove(tmp)
        return out

    def continuous_rows(self, doc: int, start: int, end: int) -> List[Tuple[int, int, np.ndarray]]:
        """(position in [start, end), segment index in the document, float32 rows [P, dim]) of every
        continuous segment inside [start, end) (pieces never cut one: they are atomic)."""
        out, pos = [], 0
        first_seg = int(self.doc_seg[doc])
        for k, (n, m) in enumerate(zip(*self.segments(doc))):
            n = int(n)
            if self.continuous[m] and pos < end and pos + n > start:
                store = self.stores[self.modalities[m]]
                out.append((pos - start, k, store.rows(first_seg + k, max(start, pos) - pos, min(end, pos + n) - pos)))
            pos += n
        return out

    def read(self, doc: int, start: int, end: int) -> Tuple[np.ndarray, np.ndarray]:
        """(tokens int64, modality ids int64) of [start, end) of a document."""
        toks = np.asarray(self.ds.doc_tokens(doc, start, end), dtype=np.int64)
        mods = np.empty(end - start, dtype=np.int64)
        pos = 0
        for n, m in zip(*self.segments(doc)):
            lo, hi = max(start, pos), min(end, pos + int(n))
            if hi > lo:
                mods[lo - start: hi - start] = m
            pos += int(n)
        return toks, mods


def check_fits(ds: IndexedDataset, modalities: Sequence[str], vocab_size: int, by_token_ranges: bool) -> None:
    """The cheap checks (metadata only) that a corpus was written for this model; DataError names the fix."""
    prefix, names = ds.prefix, ds.meta.get("modalities")
    if ds.multimodal and not by_token_ranges:
        unknown = [n for n in names or () if n not in modalities]
        if unknown:  # a subset (a text-only corpus in a blend) is normal, in any order: ids are remapped by name
            raise DataError(f"{prefix}.mot.json: the corpus holds modalities {unknown} that model.modalities "
                            f"{list(modalities)} lacks; add them to the model or leave this corpus out")
        known = names if names is not None else modalities
        bad = np.flatnonzero(ds.modes >= len(known))
        if len(bad):
            seg = int(bad[0])
            where = "its sidecar names" if names is not None else "model.modalities has"
            raise DataError(f"{prefix}.idx: segment {seg} (document {ds.document_of(seg)}) has modality id "
                            f"{int(ds.modes[seg])}, but {where} only {len(known)} modalities {list(known)}")
    if vocab_size and ds.meta.get("vocab_size", 0) > vocab_size:
        raise DataError(f"{prefix}.mot.json: corpus vocabulary {ds.meta['vocab_size']} exceeds "
                        f"model.vocab_size={vocab_size}; set model.vocab_size >= {ds.meta['vocab_size']}")
