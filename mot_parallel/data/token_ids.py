"""Token ids against the model's vocabulary: checked once per corpus, before training, and cached.

An id in [model.vocab_size, padded vocabulary) trains silently with loss inf (the padded logits are
masked to -inf); a larger one fails inside the embedding with no file or document named. The embedding
does not range-check on the device (that would cost a device->host sync per step), so the data path
checks here, on the host, before any process group exists:

  * `check_corpus_token_ids(ds, vocab_size)`: every document's smallest and largest id, computed in one
    vectorised pass over the .bin (bounded chunks) and cached in <prefix>.mot_ids.npz next to the corpus,
    keyed on the .bin/.idx files (size, modification time, inode): a changed corpus is scanned again, and
    checking another vocabulary size reuses the cache. The error names the file, the document, the
    position and the fix.
  * `check_token_ids(ids, vocab_size, where)`: the same check for one batch of ids (numpy or a CPU
    tensor), for batches built outside our loader (e.g. a Megatron training script).
"""
from __future__ import annotations

import os
import zipfile
from typing import Tuple

import numpy as np

from .indexed import DataError, IndexedDataset

CACHE_SUFFIX = ".mot_ids.npz"
_CHUNK_TOKENS = 1 << 26  # tokens per vectorised pass (128 MiB of uint16): bounded memory on any corpus


def check_token_ids(ids, vocab_size: int, where: str = "tokens") -> None:
    """Host-side range check of a batch of ids (numpy array or CPU tensor) with a clear message."""
    if hasattr(ids, "detach"):  # a torch tensor
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise DataError(f"{where}: token id {int(bad[0])} is outside the vocabulary [0, {vocab_size}) "
                        f"({bad.size} such ids); check model.vocab_size and the tokenizer")


def document_id_ranges(ds: IndexedDataset) -> Tuple[np.ndarray, np.ndarray]:
    """(smallest id, largest id) of every document (0, 0 for an empty one), from the cache when it matches."""
    cache, stamp = ds.prefix + CACHE_SUFFIX, ds.stamp()
    try:
        with np.load(cache) as z:
            if np.array_equal(z["stamp"], stamp):
                return z["doc_min"], z["doc_max"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass  # no cache, or an unreadable one: scan again
    doc_min, doc_max = _scan(ds)
    tmp = f"{cache}.tmp.{os.getpid()}.npz"
    try:
        np.savez(tmp, stamp=stamp, doc_min=doc_min, doc_max=doc_max)
        os.replace(tmp, cache)
    except OSError:  # a read-only corpus directory: correct, only not cached
        if os.path.exists(tmp):
            os.remove(tmp)
    return doc_min, doc_max


def _scan(ds: IndexedDataset) -> Tuple[np.ndarray, np.ndarray]:
    seq_start = np.concatenate([[0], np.cumsum(ds.lengths, dtype=np.int64)])
    bounds = seq_start[ds.doc_index]  # token offset of every document boundary
    n_docs = ds.num_docs
    doc_min, doc_max = np.zeros(n_docs, ds.dtype), np.zeros(n_docs, ds.dtype)
    signed = np.issubdtype(ds.dtype, np.signedinteger)
    d = 0
    while d < n_docs:  # documents [d, e) hold about _CHUNK_TOKENS tokens (at least one document)
        e = min(max(int(np.searchsorted(bounds, bounds[d] + _CHUNK_TOKENS, "right")) - 1, d + 1), n_docs)
        lo, hi = int(bounds[d]), int(bounds[e])
        nonempty = np.flatnonzero(bounds[d + 1: e + 1] > bounds[d:e])
        if len(nonempty):
            tokens, starts = ds._bin[lo:hi], bounds[d:e][nonempty] - lo
            doc_max[d + nonempty] = np.maximum.reduceat(tokens, starts)
            if signed:
                doc_min[d + nonempty] = np.minimum.reduceat(tokens, starts)
        d = e
    return doc_min, doc_max


def check_corpus_token_ids(ds: IndexedDataset, vocab_size: int) -> None:
    """Raise DataError naming the first document with an id outside [0, vocab_size), and the fix."""
    doc_min, doc_max = document_id_ranges(ds)
    bad = np.flatnonzero((doc_max.astype(np.int64) >= vocab_size) | (doc_min.astype(np.int64) < 0))
    if not len(bad):
        return
    doc = int(bad[0])
    tokens = np.asarray(ds.doc_tokens(doc), dtype=np.int64)
    pos = int(np.flatnonzero((tokens < 0) | (tokens >= vocab_size))[0])
    largest = int(doc_max.max())
    raise DataError(
        f"{ds.prefix}.bin: document {doc} has token id {int(tokens[pos])} at position {pos}, outside the "
        f"vocabulary [0, {vocab_size}) of model.vocab_size ({len(bad)} of {ds.num_docs} documents have such ids; "
        f"the corpus's ids run {int(doc_min.min())}..{largest}). Ids past model.vocab_size would train with loss "
        f"inf or fail in the embedding. Set model.vocab_size >= {largest + 1} if the tokenizer is that large, or "
        f"rebuild the corpus with this model's tokenizer (tools/preprocess_data.py --vocab-size {vocab_size} "
        "refuses such ids)")
