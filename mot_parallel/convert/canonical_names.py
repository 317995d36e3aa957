"""Canonical (layout-independent) parameter names: those of a whole MoTModel.

A DeepSpeed PipelineModule names a stage's parameters by spec index ("0." embedding, "1".."L" the
layers, "L+1." the head); MoTModel built for one stage names its layers by position in the stage.
Both map to  embedding.* / layers.<global layer>.* / head.*."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

VOCAB_PARAMS = ("embedding.word_embeddings.weight", "head.output_layer.weight")


def fit_vocab(t: torch.Tensor, rows: int) -> torch.Tensor:
    """A vocabulary matrix padded with zero rows (or truncated) to `rows`: each layout pads the
    vocabulary to its own multiple; rows beyond the true vocabulary are never used."""
    if t.shape[0] == rows:
        return t
    if t.shape[0] > rows:
        return t[:rows]
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def canonical_name(name: str, pipeline: bool, num_layers: int, numbers=None) -> str:
    """The canonical name of a local parameter name (`numbers`: the global numbers of a stage's layers, when
    it is an MoTModel built for one stage; None: its own layers are numbered from 0)."""
    if pipeline:
        idx, rest = name.split(".", 1)
        i = int(idx)
        return "embedding." + rest if i == 0 else "head." + rest if i == num_layers + 1 else f"layers.{i - 1}.{rest}"
    if name.startswith("layers."):
        _, local, rest = name.split(".", 2)
        return f"layers.{numbers[int(local)] if numbers is not None else int(local)}.{rest}"
    return name


def canonical_names(module: nn.Module, pipeline: bool, num_layers: int) -> Dict[str, str]:
    """local parameter name -> canonical name, for every parameter of `module`."""
    numbers = None if pipeline else [layer.layer_number for layer in getattr(module, "layers", [])]
    return {name: canonical_name(name, pipeline, num_layers, numbers) for name, _ in module.named_parameters()}
