"""The training and validation data a config asks for: each one CorpusSet (+ its document order).

    data.path         a corpus prefix, or a blend "w1 p1 w2 p2 ..." (blend.py); "demo" = the demo corpus
    data.valid_path   the validation corpus or blend, when it has its own
    data.valid_fraction  else: hold out this fraction of every training source's documents (a fixed hash
                      of the document index decides, corpus_set.split_documents; no document is in both)
A source may hold a subset of the model's modalities (a text-only corpus); one naming a modality the model
lacks is refused when it is opened, before training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np

from ..config import Config, atomic_modalities
from ..config.blend_spec import parse_blend
from ..config.schema import DEMO_CORPUS
from .blend import BlendOrder
from .corpus import Corpus
from .corpus_set import CorpusPart, CorpusSet, split_documents
from .indexed import DataError
from .from_config import open_corpus, open_prefix


@dataclass
class Data:
    table: CorpusSet
    order: Optional[Callable[[int], np.ndarray]]   # None = a seeded permutation of all documents per epoch


@dataclass
class Datasets:
    train: Data
    valid: Optional[Data]


def _sources(cfg: Config, spec, key: str) -> List[Tuple[float, str, Corpus]]:
    if key == "data.path" and spec == DEMO_CORPUS:  # the demo corpus (built on first use)
        corpus = open_corpus(cfg)
        return [(1.0, "demo", corpus)]
    pairs = parse_blend(spec, key)
    names, out = set(), []
    for weight, prefix in pairs:
        name = os.path.basename(prefix.rstrip("/")) or prefix
        name = name if name not in names else f"{name}_{len(out)}"
        names.add(name)
        out.append((weight, name, open_prefix(cfg, prefix, key)))
    return out


def _data(cfg: Config, sources, docs: List[np.ndarray], seed: int) -> Data:
    parts = [CorpusPart(name, corpus, d) for (_, name, corpus), d in zip(sources, docs)]
    table = CorpusSet(parts, cfg.model.modalities, atomic_modalities(cfg), list(cfg.model.continuous))
    order = BlendOrder([len(d) for d in docs], [w for w, _, _ in sources], seed) if len(parts) > 1 else None
    return Data(table, order)


def _split(sources, fraction: float) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Every source's (train, validation) documents; refuses a validation side nothing can be learned from."""
    splits = [split_documents(c.num_docs, fraction, c.prefix) for _, _, c in sources]
    if all(int(c.doc_len[v].max()) < 2 for (_, _, c), (_, v) in zip(sources, splits)):
        held = ", ".join(f"{c.prefix}: {len(v)}" for (_, _, c), (_, v) in zip(sources, splits))
        raise DataError(f"data.valid_fraction={fraction}: every held-out document has a single token ({held}), "
                        "so validation has no next-token target; give data.valid_path, or a larger fraction")
    return splits


def open_datasets(cfg: Config) -> Datasets:
    seed = cfg.train.seed
    train = _sources(cfg, cfg.data.path, "data.path")
    if cfg.data.valid_path is not None:
        valid = _sources(cfg, cfg.data.valid_path, "data.valid_path")
        return Datasets(_data(cfg, train, [np.arange(c.num_docs) for _, _, c in train], seed),
                        _data(cfg, valid, [np.arange(c.num_docs) for _, _, c in valid], seed))
    if cfg.data.valid_fraction > 0:
        splits = _split(train, cfg.data.valid_fraction)
        return Datasets(_data(cfg, train, [t for t, _ in splits], seed),
                        _data(cfg, train, [v for _, v in splits], seed))
    return Datasets(_data(cfg, train, [np.arange(c.num_docs) for _, _, c in train], seed), None)
