"""One rank's micro-batch: packed sequences turned into model inputs, labels and routing metadata.

Within a packed sequence a discrete position predicts the next token *of the same piece* when that token
is discrete too (targets.py); the last position of every piece, positions before or inside an image, and
padding get label -100 (no prediction across documents). `label_modalities` is the modality of each
target token, so per-modality losses count the modality being predicted. Arrays are [s, b] (Megatron's
sequence-first layout), int64, on the host until `to(device)`.

Continuous modalities (Transfusion): each image's patches are noised on the host (model/diffusion.py,
seeded by the image's identity), and `continuous[k]` holds modality k's noised patches, timesteps and
noise targets in flat (s-major) order, which is the order of that modality's slice of the grouped stream.
`span_ids` mark each image (bidirectional attention inside it); `context_start` lets a condition-dropped
image's patches see only from its BOI marker on (classifier-free guidance).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from ..model.model import IGNORE_INDEX
from ..model.routing import RoutingPlan
from .corpus import Corpus
from .stream import Piece
from .targets import lm_targets


class ContinuousInputs(NamedTuple):
    """One continuous modality's tokens of a micro-batch, in flat (s-major) order."""
    x_t: torch.Tensor   # [n, D] float32, noised patches (the model's input)
    t: torch.Tensor     # [n] int64, the timestep of each patch's image
    target: torch.Tensor  # [n, D] float32, the diffusion target: the noise, or v (diffusion.prediction)

    def to(self, move) -> "ContinuousInputs":
        return ContinuousInputs(move(self.x_t), move(self.t), move(self.target))


@dataclass
class MicroBatch:
    tokens: torch.Tensor            # [s, b]
    labels: torch.Tensor            # [s, b], IGNORE_INDEX where nothing is predicted
    modality_ids: torch.Tensor      # [s, b], of the input tokens (host: routing is planned from these)
    label_modalities: torch.Tensor  # [s, b], of the target tokens
    segment_ids: torch.Tensor       # [s, b], piece index within each sequence (host)
    global_label_counts: torch.Tensor  # [M] training targets per modality in the WHOLE global batch
    step: int = 0
    micro: int = 0
    plan: Optional[RoutingPlan] = field(default=None, repr=False)
    span_ids: Optional[torch.Tensor] = None       # [s, b] image index within its column, -1 elsewhere (host)
    context_start: Optional[torch.Tensor] = None  # [s, b] first visible position, -1 = the document's (host)
    continuous: List[ContinuousInputs] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.tokens.numel()

    def to(self, device: torch.device) -> "MicroBatch":
        """Inputs and labels to the device (modality/segment/span ids stay on the host for planning)."""
        pin = device.type != "cpu"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (lambda t: t.to(device))
        self.tokens, self.labels, self.label_modalities = (move(t) for t in (self.tokens, self.labels,
                                                                               self.label_modalities))
        self.global_label_counts = move(self.global_label_counts)  # a blocking upload would sync the device
        self.continuous = [c.to(move) for c in self.continuous]
        return self


class _Images:
    """The images of a micro-batch being built: per continuous modality where each image's patches sit
    ([b, s] row indices) and their noised values, each image's span and its visible context ([b, s]), and
    how they are noised (`noiser`, at `step`; `train`: with condition dropout)."""

    def __init__(self, b: int, seq_len: int, modality_ids: List[int], noiser, step: int, train: bool):
        self.ids, self.dims = modality_ids, noiser.patch_dims
        self.noiser, self.step, self.train = noiser, step, train
        self.row_of = {m: np.full((b, seq_len), -1, np.int64) for m in modality_ids}
        self.rows = {m: [] for m in modality_ids}
        self.count = {m: 0 for m in modality_ids}
        self.spans = np.full((b, seq_len), -1, np.int64)
        self.context = np.full((b, seq_len), -1, np.int64)

    def add(self, m: int, j: int, pos: int, noised) -> None:
        n = len(noised.x_t)
        self.row_of[m][j, pos:pos + n] = np.arange(self.count[m], self.count[m] + n)
        self.rows[m].append(noised)
        self.count[m] += n

    def noise_piece(self, corpus, p: Piece, j: int, pos: int) -> None:
        """Noise every image of piece `p` (placed at column j, position pos) and record its span and context."""
        for offset, segment, rows in corpus.continuous_rows(p.doc, p.start, p.end):
            first, n = pos + offset, len(rows)
            m = int(corpus.modality_ids(p.doc, p.start + offset, p.start + offset + 1)[0])
            image_first = p.start + offset <= 1  # only a BOI marker (or nothing) before it in its document
            noised = self.noiser(rows, self.step, p.doc, segment, image_first, self.train)
            self.add(m, j, first, noised)
            self.spans[j, first:first + n] = int(self.spans[j].max()) + 1
            if noised.drop_condition:  # see only the BOI marker right before the image, if it is in this piece
                self.context[j, first:first + n] = first - 1 if offset > 0 else first

    def inputs(self) -> List[ContinuousInputs]:
        out = []
        for m in self.ids:
            order = self.row_of[m].T.reshape(-1)            # s-major: the grouped slice's order
            order = order[order >= 0]
            cat = lambda key: np.concatenate([getattr(r, key) for r in self.rows[m]]) if self.rows[m] else None  # noqa: E731
            x, target = cat("x_t"), cat("target")
            t = np.concatenate([np.full(len(r.x_t), r.t, np.int64) for r in self.rows[m]]) if self.rows[m] else None
            if x is None:  # no image of this modality here: empty, but shaped for the projections
                d = self.dims[m]
                out.append(ContinuousInputs(torch.zeros(0, d), torch.zeros(0, dtype=torch.long), torch.zeros(0, d)))
                continue
            out.append(ContinuousInputs(torch.from_numpy(x[order]), torch.from_numpy(t[order]),
                                        torch.from_numpy(target[order])))
        return out


def build_micro_batch(corpus: Corpus, seqs: List[List[Piece]], seq_len: int, global_label_counts: np.ndarray,
                      step: int = 0, micro: int = 0, noiser=None, train: bool = True) -> MicroBatch:
    b = len(seqs)
    tokens = np.zeros((b, seq_len), np.int64)
    labels = np.full((b, seq_len), IGNORE_INDEX, np.int64)
    mods = np.zeros((b, seq_len), np.int64)
    label_mods = np.zeros((b, seq_len), np.int64)
    segments = np.zeros((b, seq_len), np.int64)
    continuous = getattr(corpus, "continuous", np.zeros(len(corpus.modalities), bool))
    images = _Images(b, seq_len, [int(m) for m in np.flatnonzero(continuous)], noiser, step, train) \
        if continuous.any() else None
    for j, seq in enumerate(seqs):
        pos = 0
        for k, p in enumerate(seq):
            toks, m = corpus.read(p.doc, p.start, p.end)
            n = len(toks)
            tokens[j, pos:pos + n], mods[j, pos:pos + n], segments[j, pos:pos + n] = toks, m, k
            ok = lm_targets(m, continuous)
            labels[j, pos:pos + n - 1] = np.where(ok, toks[1:], IGNORE_INDEX)
            label_mods[j, pos:pos + n - 1] = m[1:]
            if images is not None:
                images.noise_piece(corpus, p, j, pos)
            pos += n
        segments[j, pos:] = len(seq)  # padding: its own segment, never attended to by real tokens
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.T))  # noqa: E731  [b, s] -> [s, b]
    mb = MicroBatch(t(tokens), t(labels), t(mods), t(label_mods), t(segments),
                    torch.as_tensor(global_label_counts, dtype=torch.float32), step, micro)
    if images is not None:
        mb.span_ids, mb.context_start, mb.continuous = t(images.spans), t(images.context), images.inputs()
    return mb
