"""Several corpora, or document subsets of them, seen as one SegmentTable with global document ids.

The packer, the stream and the batch builder know one table; a blend of corpora and the train/validation
split are both built as a `CorpusSet`: its parts are (corpus, selected documents), its documents are the
parts' selected documents back to back (global id = part offset + position in the selection), and reads
go to the part's own corpus. Every part's segments are already in the model's modality numbering
(corpus.py remaps a corpus that holds a subset of the model's modalities).

`split_documents` is the deterministic document-level train/validation split: a document is held out by
a fixed hash of its index alone (no seed, no dependence on the corpus size), so every run, seed and
layout holds out the same documents and no document is ever in both sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from .corpus import Corpus, SegmentTable


@dataclass(frozen=True)
class CorpusPart:
    name: str             # for metrics (per-source documents and tokens)
    corpus: Corpus
    docs: np.ndarray      # int64 document indices of `corpus` in this set


class CorpusSet(SegmentTable):
    def __init__(self, parts: Sequence[CorpusPart], modalities: Sequence[str], atomic: Sequence[str] = (),
                 continuous: Sequence[str] = ()):
        if not parts:
            raise ValueError("a CorpusSet needs at least one part")
        self.parts = list(parts)
        lens, modes, starts = [], [], [0]
        for part in self.parts:
            seg_len, seg_mode = _select(part.corpus, part.docs)
            lens.append(seg_len)
            modes.append(seg_mode)
            starts.append(starts[-1] + len(seg_len))
        seg_len, seg_mode = np.concatenate(lens), np.concatenate(modes)
        doc_seg = [np.zeros(1, np.int64)]
        for part, base in zip(self.parts, starts):
            sizes = part.corpus.doc_seg[part.docs + 1] - part.corpus.doc_seg[part.docs]
            doc_seg.append(base + np.cumsum(sizes))
        self.offsets = np.cumsum([0] + [len(p.docs) for p in self.parts])
        prefix = " + ".join(p.corpus.prefix for p in self.parts)
        super().__init__(seg_len, seg_mode, np.concatenate(doc_seg), modalities, atomic, prefix, continuous)

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.parts]

    def source_of(self, docs: np.ndarray) -> np.ndarray:
        """The part each global document comes from."""
        return np.searchsorted(self.offsets, docs, side="right") - 1

    def local(self, doc: int) -> Tuple[Corpus, int]:
        s = int(self.source_of(np.asarray([doc]))[0])
        part = self.parts[s]
        return part.corpus, int(part.docs[doc - self.offsets[s]])

    def read(self, doc: int, start: int, end: int) -> Tuple[np.ndarray, np.ndarray]:
        corpus, local = self.local(doc)
        return corpus.read(local, start, end)

    def continuous_rows(self, doc: int, start: int, end: int):
        corpus, local = self.local(doc)
        return corpus.continuous_rows(local, start, end)


def _select(corpus: SegmentTable, docs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(lengths, modes) of the segments of `docs`, in that order; vectorised (millions of segments)."""
    first, last = corpus.doc_seg[docs], corpus.doc_seg[docs + 1]
    counts = last - first
    index = np.repeat(first - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
    return corpus.seg_len[index], corpus.seg_mode[index]


def _hash01(docs: np.ndarray) -> np.ndarray:
    """A fixed, well-mixed map of document indices to [0, 1) (splitmix64's finaliser)."""
    x = docs.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2 ** 53)


def split_documents(num_docs: int, valid_fraction: float) -> Tuple[np.ndarray, np.ndarray]:
    """(train documents, validation documents): a fixed hash of each index decides, so the split does not
    depend on the seed or the layout. At least one document stays on each side when both are asked for."""
    docs = np.arange(num_docs, dtype=np.int64)
    if valid_fraction <= 0:
        return docs, docs[:0]
    if num_docs < 2:
        raise ValueError(f"{num_docs} document(s): nothing to hold out for validation")
    held = _hash01(docs) < valid_fraction
    if held.all() and num_docs > 1:
        held[np.argmax(_hash01(docs))] = False
    if not held.any():
        held[np.argmin(_hash01(docs))] = True
    return docs[~held], docs[held]
