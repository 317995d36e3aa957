"""The narrow door through which the runtime reaches the demo corpus builders (`data.path: demo`).

The runtime trains on corpora; it builds none. The demo corpora (a token world and a picture world) are
built by mot_parallel/corpus_building/, which this package never imports (tests/test_import_graph.py):
an entry point (launch/pretrain.py, a tool, the test harness) calls
`mot_parallel.corpus_building.register_demo_corpora()`, which hands each builder over as a `DemoCorpus`
record: what the config must declare to train on it, and a function that writes it. With `data.path: demo`
and nothing registered, the data preflight says so by name instead of importing the builders itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from ..config.schema import DEMO_CORPUS
from .indexed import DataError


@dataclass(frozen=True)
class DemoCorpus:
    kind: str                                  # "demo" (tokens) or "pictures" (continuous images)
    modalities: Tuple[str, ...]
    vocab_size: int
    write: Callable[[str, int, int, int], str]  # (prefix, documents, seed, patch) -> prefix, an atomic write
    continuous: Optional[Callable[[int], Dict[str, dict]]] = None  # patch side -> model.continuous it needs
    patches: Tuple[int, ...] = ()              # the patch sides its pictures can be cut into (none: tokens)


_DEMOS: Dict[str, DemoCorpus] = {}


def register_demo(demo: DemoCorpus) -> None:
    _DEMOS[demo.kind] = demo


def registered_demo(kind: str) -> DemoCorpus:
    if kind not in _DEMOS:
        raise DataError(f"data.path={DEMO_CORPUS} asks for a demo corpus ({kind}), but no demo corpus builder is "
                        "registered in this process: call mot_parallel.corpus_building.register_demo_corpora() "
                        "before training (launch/pretrain.py does), or give data.path")
    return _DEMOS[kind]
