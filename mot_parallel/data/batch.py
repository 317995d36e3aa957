"""One rank's micro-batch: packed sequences turned into model inputs, labels and routing metadata.

Within a packed sequence, position t predicts token t+1 *of the same piece*; the last position of every
piece and all padding get label -100 (no prediction across documents). `label_modalities` is the
modality of each target token, so per-modality losses count the modality being predicted. Arrays are
[s, b] (Megatron's sequence-first layout), int64, on the host until `to(device)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ..model.model import IGNORE_INDEX
from ..model.routing import RoutingPlan
from .corpus import Corpus
from .stream import Piece


@dataclass
class MicroBatch:
    tokens: torch.Tensor            # [s, b]
    labels: torch.Tensor            # [s, b], IGNORE_INDEX where nothing is predicted
    modality_ids: torch.Tensor      # [s, b], of the input tokens (host: routing is planned from these)
    label_modalities: torch.Tensor  # [s, b], of the target tokens
    segment_ids: torch.Tensor       # [s, b], piece index within each sequence (host)
    global_label_counts: torch.Tensor  # [M] loss tokens per modality in the WHOLE global batch
    step: int = 0
    micro: int = 0
    plan: Optional[RoutingPlan] = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    def to(self, device: torch.device) -> "MicroBatch":
        """Inputs and labels to the device (modality/segment ids stay on the host for planning)."""
        pin = device.type != "cpu"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (lambda t: t.to(device))
        self.tokens, self.labels, self.label_modalities = (move(t) for t in (self.tokens, self.labels,
                                                                               self.label_modalities))
        self.global_label_counts = move(self.global_label_counts)  # a blocking upload would sync the device
        return self


def build_micro_batch(corpus: Corpus, seqs: List[List[Piece]], seq_len: int,
                      global_label_counts: np.ndarray, step: int = 0, micro: int = 0) -> MicroBatch:
    b = len(seqs)
    tokens = np.zeros((b, seq_len), np.int64)
    labels = np.full((b, seq_len), IGNORE_INDEX, np.int64)
    mods = np.zeros((b, seq_len), np.int64)
    label_mods = np.zeros((b, seq_len), np.int64)
    segments = np.zeros((b, seq_len), np.int64)
    for j, seq in enumerate(seqs):
        pos = 0
        for k, p in enumerate(seq):
            toks, m = corpus.read(p.doc, p.start, p.end)
            n = len(toks)
            tokens[j, pos:pos + n], mods[j, pos:pos + n], segments[j, pos:pos + n] = toks, m, k
            labels[j, pos:pos + n - 1], label_mods[j, pos:pos + n - 1] = toks[1:], m[1:]
            pos += n
        segments[j, pos:] = len(seq)  # padding: its own segment, never attended to by real tokens
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.T))  # noqa: E731  [b, s] -> [s, b]
    return MicroBatch(t(tokens), t(labels), t(mods), t(label_mods), t(segments),
                      torch.as_tensor(global_label_counts, dtype=torch.float32), step, micro)
