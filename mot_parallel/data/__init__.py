"""Data at training and sampling time: Megatron-compatible indexed corpora (indexed.py), continuous patches
beside them (continuous_store.py), modality segments (corpus.py), token ids against the vocabulary, once per corpus
(token_ids.py), the document stream (stream.py, doc_cuts.py), pieces as arrays (pieces.py), per-modality balanced packing
(packing.py: pool.py, cells.py, atomic_units.py, mixed_items.py, splittable_slices.py; the plan in
global_batch.py; metrics and bounds in balance.py), micro-batches (batch.py), the per-rank
loader (loader.py) and its settings (loader_settings.py), several corpora or document subsets as one table (corpus_set.py), blends with weights
(blend.py), the training/validation data of a config (datasets.py, from_config.py; the demo corpus through
demo_registry.py), and what sampling decodes with (text_tokenizer.py, images.py, vae.py).

Building corpora is mot_parallel/corpus_building/ (tools only); nothing here imports it."""
from ..lazy_exports import lazy_exports

# name -> submodule; imported on first use (PEP 562), so `import mot_parallel.data.indexed` (a tool checking its
# arguments) does not load torch through the loader
_EXPORTS = {"balance_bound": "balance", "batch_stats": "balance", "MicroBatch": "batch", "build_micro_batch": "batch",
            "Corpus": "corpus", "SegmentTable": "corpus", "DataError": "indexed", "IndexedDataset": "indexed",
            "IndexedWriter": "indexed", "token_dtype": "indexed", "MoTDataLoader": "loader", "StepBatch": "loader",
            "LoaderSettings": "loader_settings",
            "GlobalBatch": "packing", "PackingWarning": "packing", "pack_balanced": "packing",
            "pack_sequential": "packing", "DocumentStream": "stream", "Held": "stream", "Piece": "stream"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
