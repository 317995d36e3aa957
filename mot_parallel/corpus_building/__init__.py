"""Corpus building: everything that makes, checks or reads back a corpus for people, run by tools/ only.

    preprocessing   tools/preprocess_data.py: documents.py (one record -> segments), fields.py, jsonl.py,
                    sources.py (JSONL, parquet, webdataset inputs), image_files.py, vae_encode.py,
                    image_tokenizer.py (VQ codes), image_specs.py (continuous modalities), token_layout.py
    demo corpora    demo_corpus.py (tokens), demo_pictures.py (pictures); handed to the runtime by
                    `register_demo_corpora()` for `data.path: demo` (data/demo_registry.py)
    real corpus     real/ (tools/build_real_corpus.py)
    reading back    corpus_decode.py (tools/inspect_corpus.py); profiles.py (document-length mixes of benchmarks)

The runtime (data/, training/, ...) never imports this package; it imports the runtime's corpus format
(data/indexed.py, data/continuous_store.py), so what it writes is what training reads.
"""
from ..data.demo_registry import DemoCorpus, register_demo
from . import demo_corpus, demo_pictures


def register_demo_corpora() -> None:
    """Hand the demo builders to the runtime (idempotent): entry points call this before training."""
    register_demo(DemoCorpus("demo", tuple(demo_corpus.MODALITIES), demo_corpus.VOCAB_SIZE,
                             lambda prefix, n, seed, _: demo_corpus.write_demo_corpus(prefix, n, seed=seed,
                                                                                      overwrite=True)))
    register_demo(DemoCorpus("pictures", tuple(demo_pictures.MODALITIES), demo_pictures.VOCAB_SIZE,
                             lambda prefix, n, seed, patch: demo_pictures.write_demo_pictures(
                                 prefix, n, seed=seed, patch=patch, overwrite=True),
                             lambda patch: {"image": demo_pictures.continuous_spec(patch)}, tuple(demo_pictures.PATCHES)))
