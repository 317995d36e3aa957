"""Data pipeline: Megatron-compatible indexed corpora (indexed.py), modality segments (corpus.py), token ids
against the vocabulary, once per corpus (token_ids.py),
the document stream (stream.py), per-modality balanced packing (packing.py), micro-batches (batch.py),
the per-rank loader (loader.py) and the offline demo corpus (demo_corpus.py)."""
from .batch import MicroBatch, build_micro_batch
from .corpus import Corpus, SegmentTable
from .indexed import DataError, IndexedDataset, IndexedWriter, token_dtype
from .loader import MoTDataLoader, StepBatch
from .packing import GlobalBatch, batch_stats, pack_balanced, pack_sequential
from .stream import DocumentStream, Piece

__all__ = ["Corpus", "DataError", "DocumentStream", "GlobalBatch", "IndexedDataset", "IndexedWriter", "MicroBatch",
           "MoTDataLoader", "Piece", "SegmentTable", "StepBatch", "batch_stats", "build_micro_batch",
           "pack_balanced", "pack_sequential", "token_dtype"]
