"""Weights between MoTGPTModel (any TP / PP / virtual-pipeline layout) and checkpoints on disk.

    setup = megatron_setup("ckpt")          # a universal checkpoint or a to-megatron directory
    config = TransformerConfig(**setup.config_kwargs(), tensor_model_parallel_size=2, ...)
    model = MoTGPTModel(config, get_mot_layer_spec(setup.options), **setup.model, mot=setup.options)
    load_into_megatron(model, "ckpt")       # this rank's TP shards of its stage's layers
    ...
    megatron_to_universal(model, "out")     # every rank calls it; back to our tools (export, resharding)

Two sources load the same way:
  - a universal checkpoint (mot_parallel/convert/universal.py: per-modality, unsharded, fp32);
  - a to-megatron directory (write_megatron_checkpoint, `tools/convert_checkpoint.py to-megatron`):
      <dir>/model.safetensors  every weight, unsharded, under the parameter names of a TP=1, PP=1
                               MoTGPTModel (so at TP=1 `model.load_state_dict(load_file(...))` is enough)
      <dir>/megatron.json      the TransformerConfig fields, MoTOptions and MoTGPTModel arguments
                               (MegatronSetup) that build that model.
Loading checks the architecture first and names every mismatch; vocabulary rows are padded with zeros
(or cut) to the model's vocab_size, which may pad differently (rows past the true vocabulary are never
targets). The embedding and output layer are split over TP by vocabulary rows (Megatron's layout); MoT
weights by their own tags, fused blocks (q/k/v, gate/up) block by block.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..convert.canonical_names import VOCAB_PARAMS, fit_vocab
from ..convert.universal import ShardWriter, Universal, fresh_temp_dir, is_universal, move_into_place, publish, temp_dir
from ..distributed.collectives import group_rank, group_size
from ..outputs import MEGATRON
from ..distributed.startup import barrier_if_distributed
from ..tensor_parallel.layout import gather_full, split_full
from ..tensor_parallel.param_meta import tp_partition
from .names import (MegatronSetup, canonical_names, megatron_name, mismatches, setup_from_config, setup_of_model,
                    universal_config)

SETUP_FILE, WEIGHTS_FILE = "megatron.json", "model.safetensors"


class _Source:
    """Full tensors by universal name, from a universal checkpoint or a to-megatron directory."""

    def __init__(self, path: str):
        self.path = path
        if is_universal(path):
            self.universal = Universal(path)
            self.setup = setup_from_config(self.universal.config, self.universal.meta.get("vocab_rows", 0))
            self.names = set(self.universal.names())
        elif os.path.isfile(os.path.join(path, SETUP_FILE)):
            self.universal = None
            with open(os.path.join(path, SETUP_FILE)) as f:
                self.setup = MegatronSetup.from_json(json.load(f), os.path.join(path, SETUP_FILE))
            self.file = safe_open(os.path.join(path, WEIGHTS_FILE), "pt")
            self.names = set(self.file.keys())
        else:
            raise FileNotFoundError(f"{path}: neither a universal checkpoint (universal.json) nor a to-megatron "
                                    f"directory ({SETUP_FILE}); see tools/convert_checkpoint.py")

    def get(self, canonical: str) -> torch.Tensor:
        if self.universal is not None:
            return self.universal.get(canonical)
        name = megatron_name(canonical)
        if name not in self.names:
            raise KeyError(f"{self.path}/{WEIGHTS_FILE}: no tensor {name!r}")
        return self.file.get_tensor(name)


def megatron_setup(path: str) -> MegatronSetup:
    """How to build the MoTGPTModel that `path` (universal or to-megatron directory) holds."""
    return _Source(path).setup


def _chunks(model) -> list:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _local_shard(full: torch.Tensor, canonical: str, p: torch.Tensor, vocab_rows: int, tp: int, rank: int):
    if canonical in VOCAB_PARAMS:  # Megatron's vocab-parallel layout: rows split evenly over TP
        return split_full(fit_vocab(full, vocab_rows), 0, rank, tp)
    dim, blocks = tp_partition(p)
    return split_full(full, dim, rank, tp, blocks)


def load_into_megatron(model, path: str) -> MegatronSetup:
    """Fill a MoTGPTModel (or a list of virtual-pipeline chunks) from `path`: this rank's TP shards of the
    layers its stage holds. No collectives. Returns the checkpoint's MegatronSetup."""
    src = _Source(path)
    chunks = _chunks(model)
    problems = mismatches(src.setup, setup_of_model(chunks[0]))
    if problems:
        raise ValueError(f"{path} does not fit this MoTGPTModel:\n  - " + "\n  - ".join(problems))
    with torch.no_grad():
        for chunk in chunks:
            group = chunk.own_tp_group()
            tp, rank = group_size(group), group_rank(group)
            for local, canonical in canonical_names(chunk).items():
                p = chunk.get_parameter(local)
                if canonical is None:  # tied output layer on the last stage: the embedding's copy
                    canonical = "embedding.word_embeddings.weight"
                shard = _local_shard(src.get(canonical).float(), canonical, p, chunk.vocab_size, tp, rank)
                if tuple(shard.shape) != tuple(p.shape):
                    raise ValueError(f"{path}: {canonical} gives a shard of {tuple(shard.shape)} for {local} "
                                     f"{tuple(p.shape)} at TP rank {rank}/{tp}")
                p.copy_(shard.to(p.dtype))
    return src.setup


def _stage_ranks(model) -> tuple:
    """(pipeline rank, data-parallel rank) from the model's own process groups, else Megatron's globals."""
    from megatron.core import parallel_state as ps
    pg = model.__dict__.get("pg_collection") or model.__dict__.get("model_comm_pgs")
    pp, dp = getattr(pg, "pp", None), getattr(pg, "dp", None)
    initialised = ps.model_parallel_is_initialized()
    pp_rank = group_rank(pp) if pp is not None else (ps.get_pipeline_model_parallel_rank() if initialised else 0)
    dp_rank = group_rank(dp) if dp is not None else (ps.get_data_parallel_rank() if initialised else 0)
    return pp_rank, dp_rank


def _full_tensors(chunk) -> Dict[str, torch.Tensor]:
    """Universal name -> full fp32 tensor for one chunk (collective over its TP group)."""
    group, out = chunk.own_tp_group(), {}
    for local, canonical in canonical_names(chunk).items():
        if canonical is None:
            continue
        p = chunk.get_parameter(local)
        t = p.detach().float()
        if canonical in VOCAB_PARAMS:
            out[canonical] = torch.cat(_all_gather(t, group)) if group_size(group) > 1 else t
        else:
            out[canonical] = gather_full(t, p, group)
    return out


def _all_gather(t: torch.Tensor, group) -> List[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(group_size(group))]
    torch.distributed.all_gather(parts, t.contiguous(), group=group)
    return parts


def megatron_to_universal(model, path: str, *, vocab_size: Optional[int] = None, step: int = 0) -> None:
    """Write a MoTGPTModel (or its virtual-pipeline chunks) as a universal checkpoint. Collective: every
    rank calls it; one writer per pipeline stage (TP rank 0, DP rank 0). `vocab_size`: the true vocabulary
    (default: the model's, padding included)."""
    chunks = _chunks(model)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    tmp = fresh_temp_dir(path) if rank == 0 else temp_dir(path)
    barrier_if_distributed()
    pp_rank, dp_rank = _stage_ranks(chunks[0])
    writer = ShardWriter(tmp, f"model-stage{pp_rank}")
    for chunk in chunks:
        tensors = _full_tensors(chunk)
        if group_rank(chunk.own_tp_group()) == 0 and dp_rank == 0:
            for name, t in tensors.items():
                writer.add(name, t)
    writer.flush()
    barrier_if_distributed()
    if rank == 0:
        setup = setup_of_model(chunks[0], vocab_size)
        publish(path, universal_config(setup), {"step": step, "has_optimizer": False,
                                                "vocab_rows": chunks[0].vocab_size, "vocab_size": setup.vocab_size},
                {"step": step})
    barrier_if_distributed()


def write_megatron_checkpoint(universal_path: str, out: str) -> MegatronSetup:
    """A universal checkpoint -> a to-megatron directory (one process, CPU, no process group)."""
    src = _Source(universal_path)
    if src.universal is None:
        raise ValueError(f"{universal_path}: not a universal checkpoint")
    tmp = fresh_temp_dir(out, MEGATRON)
    tensors = {megatron_name(n): src.get(n).float().contiguous() for n in sorted(src.names)}
    save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "mot_parallel.megatron/1"})
    with open(os.path.join(tmp, SETUP_FILE), "w") as f:
        json.dump(src.setup.to_json(), f, indent=1)
    move_into_place(tmp, out)
    return src.setup
