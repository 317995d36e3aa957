"""Open the corpus a config asks for; with `data.path: null`, build the offline demo corpus first.

The demo corpus is written under <run.output_dir>/demo_corpus/ by whichever rank gets there first;
writes are atomic (pid-suffixed temp files renamed into place), so concurrent builders are harmless
and produce identical bytes."""
from __future__ import annotations

import os

from ..config import Config, atomic_modalities
from .corpus import Corpus
from .demo_corpus import MODALITIES, VOCAB_SIZE, write_demo_corpus
from .indexed import DataError


def demo_prefix(cfg: Config) -> str:
    return os.path.join(cfg.run.output_dir, "demo_corpus", f"demo_{cfg.data.demo_documents}")


def open_corpus(cfg: Config) -> Corpus:
    prefix = cfg.data.path
    if prefix is None:
        if list(cfg.model.modalities) != list(MODALITIES) or cfg.model.vocab_size < VOCAB_SIZE:
            raise DataError(f"data.path is null, so the demo corpus is used: it needs model.modalities = "
                            f"{list(MODALITIES)} and model.vocab_size >= {VOCAB_SIZE} (got {cfg.model.modalities}, "
                            f"{cfg.model.vocab_size}); or give data.path")
        prefix = demo_prefix(cfg)
        if not os.path.isfile(prefix + ".idx"):
            write_demo_corpus(prefix, cfg.data.demo_documents, seed=0)
    return Corpus(prefix, cfg.model.modalities, cfg.model.vocab_size, cfg.data.modality_token_ranges or None,
                  atomic=atomic_modalities(cfg))
