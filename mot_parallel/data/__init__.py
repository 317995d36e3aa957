"""Data pipeline: Megatron-compatible indexed corpora (indexed.py), modality segments (corpus.py),
the document stream (stream.py), per-modality balanced packing (packing.py), micro-batches (batch.py),
the per-rank loader (loader.py) and the offline demo corpus (demo_corpus.py)."""
from .batch import MicroBatch, build_micro_batch
from .corpus import Corpus, SegmentTable
from .indexed import DataError, IndexedDataset, IndexedWriter, token_dtype
from .loader import MoTDataLoader, StepBatch
from .balance import balance_bound, batch_stats
from .packing import GlobalBatch, PackingWarning, pack_balanced, pack_sequential
from .stream import DocumentStream, Held, Piece

__all__ = ["Corpus", "DataError", "DocumentStream", "GlobalBatch", "IndexedDataset", "IndexedWriter", "MicroBatch",
           "MoTDataLoader", "PackingWarning", "Piece", "Held", "SegmentTable", "StepBatch", "balance_bound", "batch_stats", "build_micro_batch",
           "pack_balanced", "pack_sequential", "token_dtype"]
