"""Which documents the corpus holds, as text, scan indices and utterances (before any tokenising).

Document kinds (the demo corpus' mix; fractions are the drawing probabilities):
  caption_image    25%  [caption, image]
  image_caption    15%  [image, caption]
  sentence_speech  20%  [sentence, the sentence spoken]            a short prose sentence
  interleaved      15%  [caption, image, bridge text, the caption spoken]
  prose            25%  [a chunk of docstring prose]
Documents are independent units, so a document-level train/validation split never leaks: every scan,
prose chunk and spoken sentence is used by one document only (scans, chunks and sentences are dealt out
from seeded permutations; prose chunks and spoken sentences come from disjoint parts of the prose pool).
Only when a corpus is asked for more documents than a source holds are items dealt a second time; the
plan counts such reuse and the sidecar records it. Document i depends on (seed, i) only, so a smaller
corpus is a prefix of a larger one built with the same seed.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, NamedTuple, Tuple, Union

import numpy as np

from .digits import Scans, caption
from .speech import Utterance, random_utterance

KINDS = ("caption_image", "image_caption", "sentence_speech", "interleaved", "prose")
KIND_P = (0.25, 0.15, 0.2, 0.15, 0.25)
BRIDGES = ("The caption, read aloud.", "Someone reads the caption.", "Here is the caption spoken.",
           "A voice says the caption.")

Segment = Tuple[str, Union[str, int, Utterance]]  # ("text", str) | ("image", scan index) | ("speech", Utterance)


class Plan(NamedTuple):
    documents: List[List[Segment]]
    kinds: List[str]
    reused: Dict[str, int]  # items dealt more than once, per source (0 = every document disjoint)


class _Deck:
    """Deals items of a list in a seeded order; cycles (and counts reuse) when it runs out."""

    def __init__(self, n: int, rng: np.random.Generator):
        self.order, self.dealt = rng.permutation(n), 0

    def deal(self) -> int:
        i = int(self.order[self.dealt % len(self.order)])
        self.dealt += 1
        return i

    @property
    def reused(self) -> int:
        return max(0, self.dealt - len(self.order))


def plan_documents(n_docs: int, seed: int, scans: Scans, prose_chunks: List[str], sentences: List[str]) -> Plan:
    kinds_rng = np.random.default_rng([seed, 0])
    decks = {"scans": _Deck(len(scans.labels), np.random.default_rng([seed, 2])),
             "prose_chunks": _Deck(len(prose_chunks), np.random.default_rng([seed, 3])),
             "sentences": _Deck(len(sentences), np.random.default_rng([seed, 4]))}
    docs, kinds = [], []
    for i in range(n_docs):
        kind = KINDS[int(kinds_rng.choice(len(KINDS), p=KIND_P))]
        rng = np.random.default_rng([seed, 1, i])  # everything else about document i
        if kind == "prose":
            doc: List[Segment] = [("text", prose_chunks[decks["prose_chunks"].deal()])]
        elif kind == "sentence_speech":
            text = sentences[decks["sentences"].deal()]
            doc = [("text", text), ("speech", random_utterance(rng, text))]
        else:
            scan = decks["scans"].deal()
            doc = _digit_document(kind, rng, scan, scans)
        docs.append(doc)
        kinds.append(kind)
    return Plan(docs, kinds, {name: d.reused for name, d in decks.items()})


def _digit_document(kind: str, rng: np.random.Generator, scan: int, scans: Scans) -> List[Segment]:
    cap = caption(rng, int(scans.labels[scan]), scans.weight[scan], scans.slant[scan])
    if kind == "caption_image":
        return [("text", cap), ("image", scan)]
    if kind == "image_caption":
        return [("image", scan), ("text", cap)]
    bridge = BRIDGES[int(rng.integers(0, len(BRIDGES)))]
    return [("text", cap), ("image", scan), ("text", bridge), ("speech", random_utterance(rng, cap))]


def calibration_utterances(n: int, seed: int, scans: Scans, sentences: List[str]) -> List[Utterance]:
    """A fixed set of utterances (half captions, half sentences) for fitting the speech units; it depends on
    the seed but not on the corpus size, so corpora of every size share one unit inventory."""
    rng = np.random.default_rng([seed, 5])
    out = []
    for j in range(n):
        if j % 2 == 0:
            s = int(rng.integers(0, len(scans.labels)))
            text = caption(rng, int(scans.labels[s]), scans.weight[s], scans.slant[s])
        else:
            text = sentences[int(rng.integers(0, len(sentences)))]
        out.append(random_utterance(rng, text))
    return out


def kind_counts(plan: Plan) -> Dict[str, int]:
    c = Counter(plan.kinds)
    return {k: c.get(k, 0) for k in KINDS}
