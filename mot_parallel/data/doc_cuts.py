"""Where a document longer than a sequence is cut into pieces: at most seq_len tokens per piece, and never
inside an atomic segment (an image) that starts after the piece does (a cut that would fall inside one moves
back to its start; an atomic segment longer than a sequence is cut anyway).

`cut_points` cuts one document; `cut_many` cuts a batch of them with the same rule, a round of numpy per
piece instead of a Python loop per document (a global batch of long documents holds thousands).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .corpus import SegmentTable
from .pieces import ragged_arange


def cut_points(corpus: SegmentTable, doc: int, length: int, seq_len: int) -> List[int]:
    """Piece boundaries for a document longer than `seq_len`: at most seq_len tokens per piece, and a
    cut never falls inside an atomic segment (an image) unless that segment alone exceeds seq_len."""
    spans = corpus.atomic_spans(doc, 0, length)
    cuts, pos = [0], 0
    while length - pos > seq_len:
        cut = pos + seq_len
        for a, b in spans:
            if a < cut < b and a > pos:
                cut = a  # move the cut to the start of the image
                break
        cuts.append(cut)
        pos = cut
    return cuts + [length]


def cut_many(corpus: SegmentTable, docs: np.ndarray, length: np.ndarray, seq_len: int
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of each document (documents in order, pieces in document order): (pieces per document,
    starts, ends); as cut_points, an empty document has none."""
    count = (length > 0).astype(np.int64)
    long = np.flatnonzero(length > seq_len)
    cut_doc, cut_at = _inner_cuts(corpus, docs[long], length[long], seq_len)
    np.add.at(count, long[cut_doc], 1)
    owner = np.concatenate([np.flatnonzero(length > 0), long[cut_doc]])
    ends = np.concatenate([length[length > 0], cut_at])
    order = np.lexsort((ends, owner))
    ends = ends[order]
    starts = np.where(np.r_[True, owner[order][1:] != owner[order][:-1]], 0, np.r_[0, ends[:-1]])
    return count, starts, ends


def _inner_cuts(corpus: SegmentTable, docs: np.ndarray, length: np.ndarray, seq_len: int):
    """(document index, position) of every cut inside the documents (all longer than seq_len)."""
    if not len(docs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = corpus.doc_seg[docs].astype(np.int64)
    count = corpus.doc_seg[docs + 1].astype(np.int64) - first
    seg = ragged_arange(first, count)
    seg_len = corpus.seg_len[seg].astype(np.int64)
    csum = np.cumsum(seg_len)
    seg_end = csum - np.repeat(np.r_[0, csum][np.cumsum(count) - count], count)
    atomic = np.asarray(corpus.atomic, bool)[corpus.seg_mode[seg]]
    width = int(length.max()) + 1
    key = np.repeat(np.arange(len(docs)), count) * width + seg_end  # ascending: by document, then end
    pos = np.zeros(len(docs), np.int64)
    out_doc, out_at = [], []
    active = np.flatnonzero(length - pos > seq_len)
    while len(active):
        cut = pos[active] + seq_len
        j = np.searchsorted(key, active * width + cut, side="right")  # the segment holding token `cut`
        start = seg_end[j] - seg_len[j]
        cut = np.where(atomic[j] & (start < cut) & (start > pos[active]), start, cut)
        out_doc.append(active)
        out_at.append(cut)
        pos[active] = cut
        active = active[length[active] - cut > seq_len]
    return np.concatenate(out_doc), np.concatenate(out_at)
