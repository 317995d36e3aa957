"""What resuming onto a new layout costs (checkpoint.reshard_on_resume=auto, training/reshard.py).

The resharding moves the fp32 master weights and both Adam moments, 12 bytes a parameter:
  convert  every rank reads its share of the parameters from the DeepSpeed files and writes it into the
           universal copy: 12 B/param read + 12 B/param written, spread over the nodes;
  load     every rank reads the full tensors of its pipeline stage's parameters and keeps its slices:
           each node reads its stages (all of them when a node holds every stage) once, the page cache
           serving its other ranks.
Peak memory of one rank, above what training holds: the shard it is writing (its share, at most
universal.SHARD_BYTES before a flush) plus the largest parameter's three full fp32 tensors and one more while TP pieces are joined
(loading needs less: one full tensor and its slice at a time).
The universal copy needs 12 B/param of free disk until the run has loaded it. Time assumes the checkpoint
filesystem delivers Hardware.storage_gbps per node in each direction.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config.parallel_layout import ParallelLayout
from ..convert.universal import SHARD_BYTES
from ..model.settings import ModelSettings
from .hardware import Hardware
from .params import model_params

STATE_BYTES = 12  # fp32 weight + exp_avg + exp_avg_sq


@dataclass(frozen=True)
class ReshardCost:
    universal_bytes: float      # the temporary universal copy on disk
    peak_bytes_per_rank: float  # host memory above training's
    convert_s: float
    load_s: float


def largest_param(s: ModelSettings) -> int:
    """Elements of the largest single parameter: the (padded) vocabulary matrix, or a fused layer matrix."""
    vocab = s.padded_vocab(1) * s.hidden_size
    qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim * s.hidden_size
    return max(vocab, qkv, 2 * s.ffn_hidden_size * s.hidden_size)


def reshard_cost(s: ModelSettings, new: ParallelLayout, hw: Hardware) -> ReshardCost:
    """The cost of resharding any checkpoint of this model into layout `new`."""
    total = STATE_BYTES * model_params(s)
    nodes = max(1, new.world_size // hw.gpus_per_node)
    stages_per_node = min(new.pp, max(1, hw.gpus_per_node * new.pp // max(1, new.world_size)))
    per_second = hw.storage_gbps * 1e9
    return ReshardCost(universal_bytes=total,
                       peak_bytes_per_rank=min(SHARD_BYTES, total / new.world_size)
                       + (STATE_BYTES + 4) * largest_param(s),
                       convert_s=2 * total / nodes / per_second,
                       load_s=total / new.pp * stages_per_node / per_second)
