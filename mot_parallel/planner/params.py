"""Parameters per rank, counted analytically from the model settings and the layout. Mirrors the model
exactly (vocab padding, GQA, QK-norm, Q/K/V biases, untie subsets, final norm, tied embeddings, DeepSpeed's
pipeline partition by layer type); tests/planner/test_planner.py checks it against the real model built on the meta device."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from ..flops import continuous_params, part_params, qk_norm_params
from ..model.settings import ModelSettings


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Layers of a pipeline stage, as DeepSpeed's `partition_method='type:MoTLayerPipe'` assigns them:
    for layer counts divisible by PP (the config requires it) an even split, embedding on the first
    stage and head on the last (tests/planner/test_planner.py checks this against DeepSpeed's partitioner)."""
    if num_layers % pp:
        raise ValueError(f"{num_layers} layers do not split evenly into {pp} stages")
    per = num_layers // pp
    return range(stage * per, (stage + 1) * per)


@dataclass(frozen=True)
class RankParams:
    layers: int
    per_layer: int        # local parameters of one layer on this TP rank
    per_layer_replicated: int  # of which replicated across TP (norms)
    embedding: int
    head: int             # final norm + output layer (0 output rows when tied on one stage)

    @property
    def total(self) -> int:
        return self.layers * self.per_layer + self.embedding + self.head


def layer_params(s: ModelSettings, tp: int) -> Tuple[int, int]:
    """(local params of one layer at TP size tp, of which replicated): the matrices (and the Q/K/V
    biases, split with their rows) are split over TP, norms (and QK-norms) are replicated."""
    parts, qk = part_params(s), qk_norm_params(s)
    attn, ffn = (parts["attention"] - qk) // tp, parts["ffn"] // tp
    replicated = parts["norms"] * s.groups("norms") + qk * s.groups("attention")
    return attn * s.groups("attention") + ffn * s.groups("ffn") + replicated, replicated


def rank_params(s: ModelSettings, tp: int, pp: int, stage: int) -> RankParams:
    per_layer, replicated = layer_params(s, tp)
    layers = len(stage_layers(s.num_layers, pp, stage))
    first, last = stage == 0, stage == pp - 1
    vocab_rows = s.padded_vocab(tp) // tp * s.hidden_size
    cont = continuous_params(s)  # replicated over TP (model/continuous.py)
    embed = vocab_rows + cont["embedding"] if first else 0
    head = 0
    if last:
        head = s.hidden_size * (s.num_modalities if s.untie_final_norm else 1) + cont["head"]
        head += 0 if (s.tie_embeddings and first) else vocab_rows
    return RankParams(layers, per_layer, replicated, embed, head)


def model_params(s: ModelSettings) -> int:
    """All parameters of the model (TP = PP = 1)."""
    return rank_params(s, 1, 1, 0).total


def stage_params(s: ModelSettings, tp: int, pp: int) -> List[RankParams]:
    return [rank_params(s, tp, pp, i) for i in range(pp)]
