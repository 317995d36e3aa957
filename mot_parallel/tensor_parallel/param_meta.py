"""Typed metadata on parameters: the only place that sets or reads attributes on parameter tensors.

Megatron and DeepSpeed read a few attributes by name, so those keep Megatron's names:
  tensor_model_parallel, partition_dim, partition_stride   TP sharding (DeepSpeed counts a TP-sharded
                                                          parameter once per shard in the grad norm)
  sequence_parallel                                       replicated, but each TP rank saw other tokens
                                                          (Megatron's finalize_model_grads sums it over TP)
Our own tags live in one frozen record, `param.mot` (ParamMeta): the modality owning a copy, the blocks of
a fused output dimension, and a gradient that is partial over TP for another reason (QK-norms shared by
heads split across TP ranks; Megatron finds those by name). Readers use the functions below, so a
mistyped tag is an AttributeError or a failed check, never a silent "replicated, shared".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class ParamMeta:
    modality: Optional[str] = None               # the modality owning this copy; None = shared by all
    blocks: Optional[Tuple[int, ...]] = None     # full sizes of the fused blocks along the partition dim
    tp_partial_grad: bool = False                 # gradient is partial over TP (summed by grad_sync.py)
    no_weight_decay: bool = False                 # a matrix the optimizer does not decay (embeddings)


def meta(p: torch.Tensor) -> ParamMeta:
    return getattr(p, "mot", None) or ParamMeta()


def _update(p: torch.Tensor, **changes) -> None:
    p.mot = dataclasses.replace(meta(p), **changes)


# writers ---------------------------------------------------------------------------------------------------
def mark_tp_sharded(p: torch.Tensor, dim: int, tp_size: int, blocks: Optional[Sequence[int]] = None) -> None:
    """`p` is this rank's shard along `dim` (of every block in `blocks`, when fused); replicated at TP = 1,
    but the partition dim is recorded anyway, so checkpoint keys and conversions do not depend on TP."""
    p.tensor_model_parallel = tp_size > 1
    p.partition_dim = dim
    p.partition_stride = 1
    _update(p, blocks=tuple(blocks) if blocks and len(blocks) > 1 else None)


def mark_replicated(p: torch.Tensor) -> None:
    p.tensor_model_parallel = False
    p.partition_dim = -1
    p.partition_stride = 1


def mark_sequence_parallel(p: torch.Tensor) -> None:
    p.sequence_parallel = True


def mark_tp_partial_grad(p: torch.Tensor) -> None:
    _update(p, tp_partial_grad=True)


def mark_no_weight_decay(p: torch.Tensor) -> None:
    _update(p, no_weight_decay=True)


def set_modality(p: torch.Tensor, name: Optional[str]) -> None:
    _update(p, modality=name)


# readers ---------------------------------------------------------------------------------------------------
def tp_partition(p: torch.Tensor) -> Tuple[int, Optional[Tuple[int, ...]]]:
    """(dim, blocks) of a TP-sharded parameter; dim = -1 when it is replicated across TP."""
    if not getattr(p, "tensor_model_parallel", False):
        return -1, None
    return p.partition_dim, meta(p).blocks


def declared_partition(p: torch.Tensor) -> Tuple[int, Optional[Tuple[int, ...]]]:
    """(dim, blocks) as the layer declared them, also at TP = 1 (layout-independent checkpoint keys)."""
    return getattr(p, "partition_dim", -1), meta(p).blocks


def modality_of(p: torch.Tensor) -> Optional[str]:
    return meta(p).modality


def decays(p: torch.Tensor) -> bool:
    """Whether AdamW's weight decay applies: matrices, except those marked (embeddings); never vectors
    (norms, biases). Under ZeRO-3 a partitioned parameter's real shape is `ds_shape`."""
    return len(getattr(p, "ds_shape", p.shape)) >= 2 and not meta(p).no_weight_decay


def needs_tp_grad_sum(p: torch.Tensor) -> bool:
    """Replicated over TP but with a different gradient on each TP rank."""
    return bool(getattr(p, "sequence_parallel", False)) or meta(p).tp_partial_grad
