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


def canonical_names(module: nn.Module, pipeline: bool, num_layers: int) -> Dict[str, str]:
    """local parameter name -> canonical name, for every parameter of `module`."""
    out = {}
    if pipeline:
        for name, _ in module.named_parameters():
            idx, rest = name.split(".", 1)
            i = int(idx)
            out[name] = ("embedding." + rest if i == 0 else "head." + rest if i == num_layers + 1
                         else f"layers.{i - 1}.{rest}")
        return out
    numbers = [layer.layer_number for layer in getattr(module, "layers", [])]
    for name, _ in module.named_parameters():
        if name.startswith("layers."):
            _, local, rest = name.split(".", 2)
            out[name] = f"layers.{numbers[int(local)]}.{rest}"
        else:
            out[name] = name
    return out
