"""A DeepSpeed checkpoint of this project's engines, read from its files without an engine of its layout.

    shards = DeepSpeedShards(step_dir, {"tp": 2, "pp": 1, "dp": 2, "zero_stage": 1}, num_layers)
    for name, stage, numel in shards.params(): ...          # canonical names, in stage order
    tensors = shards.full(name, partition)                   # {"fp32", "exp_avg", "exp_avg_sq"}: full, unsharded

What the files hold (DeepSpeed 0.19), per model-parallel rank mp = pp_rank * tp + tp_rank and DP rank d:
    ZeRO-1/2, and bf16 without ZeRO  [bf16_]zero_pp_rank_<d>_mp_rank_<mp>_optim_states.pt: per parameter
        group one flat fp32 partition and its flat Adam states; `param_slice_mappings` gives each parameter's
        (start, numel) inside this DP rank's partition (a parameter may straddle two ranks). Shapes:
        mp_rank_<mp>_model_states.pt `param_shapes`.
    ZeRO-3   every parameter is split on its own into DP pieces of ceil(numel / dp) (the last padded), laid
        end to end in `param_shapes` order; shapes in zero_pp_rank_<d>_mp_rank_<mp>_model_states.pt.
Pipeline stages name parameters by layer index ("3.mlp..."), which canonical_name maps. TP shards are
joined along each parameter's declared partition (the caller's live model gives it; it does not depend on
TP). Files are opened memory-mapped and with torch's weights_only loader (DeepSpeed's three plain records
allowed), so reading one parameter touches only its bytes and nothing in the file can run code.
fp32 training without ZeRO keeps torch's own optimizer state, indexed by position: not read here
(`unsupported` says so, naming the explicit conversion).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

import torch

from ..tensor_parallel.layout import join_shards
from .canonical_names import canonical_name

KEYS = ("fp32", "exp_avg", "exp_avg_sq")


def _load(path: str) -> dict:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    with torch.serialization.safe_globals([fragment_address, LossScaler, ZeroStageEnum]):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _optim_file(step_dir: str, d: int, mp: int) -> Optional[str]:
    for prefix in ("", "bf16_"):
        path = os.path.join(step_dir, f"{prefix}zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt")
        if os.path.isfile(path):
            return path
    return None


def _model_file(step_dir: str, mp: int, zero3: bool) -> str:
    name = f"zero_pp_rank_0_mp_rank_{mp:02d}_model_states.pt" if zero3 else f"mp_rank_{mp:02d}_model_states.pt"
    return os.path.join(step_dir, name)


def unsupported(step_dir: str, rec: Dict[str, int]) -> Optional[str]:
    """Why the checkpoint at `step_dir` (written by layout `rec`) cannot be read here; None when it can.
    Reads file names only (it runs before any process group)."""
    zero3 = rec["zero_stage"] == 3
    missing = [f for mp in range(rec["tp"] * rec["pp"]) for f in [_model_file(step_dir, mp, zero3)]
               if not os.path.isfile(f)]
    missing += [f"zero_pp_rank_{d}_mp_rank_{mp:02d}_optim_states.pt" for mp in range(rec["tp"] * rec["pp"])
                for d in range(rec["dp"]) if _optim_file(step_dir, d, mp) is None]
    if not missing:
        return None
    if rec["zero_stage"] == 0 and all("optim_states" in f for f in missing):
        return ("it was written without ZeRO in fp32, whose optimizer state is torch's own (indexed by position), "
                "which only an engine of that layout reads")
    return f"{len(missing)} of its DeepSpeed files are missing, e.g. {os.path.basename(missing[0])}"


class _Partition:
    """One (model-parallel rank, DP rank) optimizer file: where each parameter's piece lies, and the flat
    tensors (memory-mapped)."""

    def __init__(self, path: str, shapes: List[Dict[str, torch.Size]], dp: int):
        sd = _load(path)["optimizer_state_dict"]
        if "param_slice_mappings" in sd:  # ZeRO-1/2, bf16 optimizer
            flat, states = sd["single_partition_of_fp32_groups"], sd["base_optimizer_state"]["state"]
            self.where = {n: (g, int(a.start), int(a.numel)) for g, mapping in enumerate(sd["param_slice_mappings"])
                          for n, a in mapping.items()}
        elif "fp32_flat_groups" in sd:  # ZeRO-3
            flat, states = sd["fp32_flat_groups"], sd["optimizer_state_dict"]["state"]
            self.where = {}
            for g, group in enumerate(shapes):
                start = 0
                for n, shape in group.items():
                    piece = math.ceil(shape.numel() / dp)
                    self.where[n], start = (g, start, piece), start + piece
                if start != flat[g].numel():
                    raise ValueError(f"{path}: group {g} holds {flat[g].numel()} values, its parameters {start}")
        else:
            raise ValueError(f"{path}: not a ZeRO optimizer state this reader knows")
        self.flat = [{"fp32": flat[g], **{k: states.get(g, {}).get(k) for k in KEYS[1:]}} for g in range(len(flat))]

    def piece(self, name: str, key: str) -> Optional[torch.Tensor]:
        if name not in self.where:
            return None
        g, start, numel = self.where[name]
        t = self.flat[g][key]
        return None if t is None else t.narrow(0, start, numel)


class DeepSpeedShards:
    """The full parameters and Adam states of a DeepSpeed checkpoint (module doc); one pipeline stage's
    files are open at a time (`full` moves on in stage order)."""

    def __init__(self, step_dir: str, rec: Dict[str, int], num_layers: int):
        self.dir, self.rec, self.num_layers = step_dir, rec, num_layers
        self.zero3 = rec["zero_stage"] == 3
        self.shapes: Dict[int, List[Dict[str, torch.Size]]] = {}  # mp rank -> param_shapes
        self.local: Dict[Tuple[int, str], str] = {}                # (stage, canonical) -> local name
        self._stage, self._parts = None, {}
        for mp in range(rec["tp"] * rec["pp"]):
            self.shapes[mp] = _load(_model_file(step_dir, mp, self.zero3))["param_shapes"]
        for stage in range(rec["pp"]):
            for group in self.shapes[stage * rec["tp"]]:
                for n in group:
                    self.local[stage, canonical_name(n, rec["pp"] > 1, num_layers)] = n

    def client_state(self) -> dict:
        """What the training saved beside the engine (step, loader, ...) and the LR schedule."""
        return _load(_model_file(self.dir, 0, self.zero3))

    def params(self) -> List[Tuple[str, int, int]]:
        """(canonical name, pipeline stage, numel of the full parameter), stage by stage."""
        out = []
        for (stage, canon), n in self.local.items():
            numel = sum(self._shape(stage * self.rec["tp"] + t, n).numel() for t in range(self.rec["tp"]))
            out.append((canon, stage, numel))
        return out

    def _shape(self, mp: int, local: str) -> torch.Size:
        return next(g[local] for g in self.shapes[mp] if local in g)

    def _open(self, stage: int) -> None:
        if self._stage != stage:  # the previous stage's files are released (unmapped) first
            self._parts, tp = {}, self.rec["tp"]
            for t in range(tp):
                mp = stage * tp + t
                self._parts[t] = [_Partition(_optim_file(self.dir, d, mp), self.shapes[mp], self.rec["dp"])
                                  for d in range(self.rec["dp"])]
            self._stage = stage

    def full(self, canon: str, stage: int, partition: Tuple[int, Optional[Tuple[int, ...]]]) -> Dict[str, torch.Tensor]:
        """{key: the full tensor} of parameter `canon` for each of KEYS the checkpoint holds."""
        self._open(stage)
        local, (dim, blocks) = self.local[stage, canon], partition
        out = {}
        for key in KEYS:
            shards = []
            for t in range(self.rec["tp"] if dim >= 0 else 1):  # a TP-replicated parameter: TP rank 0's copy
                shape = self._shape(stage * self.rec["tp"] + t, local)
                pieces = [p.piece(local, key) for p in self._parts[t]]
                pieces = [p for p in pieces if p is not None]
                if not pieces:
                    break
                flat = torch.cat(pieces)[:shape.numel()]
                if flat.numel() != shape.numel():
                    raise ValueError(f"{self.dir}: {local} ({key}) has {flat.numel()} of {shape.numel()} values")
                shards.append(flat.view(shape))
            if len(shards) == (self.rec["tp"] if dim >= 0 else 1):  # (a lone piece stays a view of the file)
                out[key] = join_shards(shards, dim, blocks) if len(shards) > 1 else shards[0]
        return out
