"""Data at training and sampling time: Megatron-compatible indexed corpora (indexed.py), continuous patches
beside them (continuous.py), modality segments (corpus.py), token ids against the vocabulary, once per corpus
(token_ids.py), the document stream (stream.py), per-modality balanced packing (packing.py: pool.py, cells.py,
atomic_units.py, splittable_fill.py; metrics and bounds in balance.py), micro-batches (batch.py), the per-rank
loader (loader.py), several corpora or document subsets as one table (corpus_set.py), blends with weights
(blend.py), the training/validation data of a config (datasets.py, from_config.py; the demo corpus through
demo_registry.py), and what sampling decodes with (text_tokenizer.py, images.py, vae.py).

Building corpora is mot_parallel/corpus_building/ (tools only); nothing here imports it."""
from .balance import balance_bound, batch_stats
from .batch import MicroBatch, build_micro_batch
from .corpus import Corpus, SegmentTable
from .indexed import DataError, IndexedDataset, IndexedWriter, token_dtype
from .loader import MoTDataLoader, StepBatch
from .packing import GlobalBatch, PackingWarning, pack_balanced, pack_sequential
from .stream import DocumentStream, Held, Piece

__all__ = ["Corpus", "DataError", "DocumentStream", "GlobalBatch", "Held", "IndexedDataset", "IndexedWriter",
           "MicroBatch", "MoTDataLoader", "PackingWarning", "Piece", "SegmentTable", "StepBatch", "balance_bound",
           "batch_stats", "build_micro_batch", "pack_balanced", "pack_sequential", "token_dtype"]
