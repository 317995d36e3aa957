"""Data pipeline: Megatron-compatible indexed corpora (indexed.py), modality segments (corpus.py), token ids
against the vocabulary, once per corpus (token_ids.py),
the document stream (stream.py), per-modality balanced packing (packing.py: pool.py, cells.py,
atomic_units.py, splittable_fill.py; metrics and bounds in balance.py), micro-batches (batch.py),
the per-rank loader (loader.py) and its settings (loader_settings.py), several corpora or document subsets as one table (corpus_set.py), blends
with weights (blend.py), the training/validation data of a config (datasets.py) and the offline demo
corpus (demo_corpus.py)."""
from .balance import balance_bound, batch_stats
from .batch import MicroBatch, build_micro_batch
from .corpus import Corpus, SegmentTable
from .indexed import DataError, IndexedDataset, IndexedWriter, token_dtype
from .loader import MoTDataLoader, StepBatch
from .loader_settings import LoaderSettings
from .packing import GlobalBatch, PackingWarning, pack_balanced, pack_sequential
from .stream import DocumentStream, Held, Piece

__all__ = ["Corpus", "DataError", "DocumentStream", "GlobalBatch", "Held", "IndexedDataset", "IndexedWriter",
           "LoaderSettings", "MicroBatch", "MoTDataLoader", "PackingWarning", "Piece", "SegmentTable", "StepBatch",
           "balance_bound", "batch_stats", "build_micro_batch", "pack_balanced", "pack_sequential", "token_dtype"]
