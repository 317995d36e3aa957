"""The files of one checkpoint, per rank, as DeepSpeed 0.19 writes them for a layout (their sizes, from
the exact parameter counts); what the content hashes cost is measured against these
(tools/bench_checkpoint_hash.py). P = a model-parallel rank's parameters (the largest pipeline stage),
b = bytes per element of the training dtype, d = DP size:
  model states   one file per TP rank and stage, written by DP rank 0: the weights, P b; under ZeRO-0
                 without bf16, also torch's Adam states (8 P); under ZeRO-3 the weights are partitioned
                 and the file holds almost nothing (counted as 0)
  optimizer      one file per rank under ZeRO 1-3 (and bf16 at ZeRO-0): fp32 master weights and Adam's
                 two moments of its 1/d partition, 12 P / d
  RNG            one small file per rank (ours), counted as 0
A save costs the rank that writes the most (DP rank 0: model states + its optimizer shard); a resume
costs the largest share when every rank verifies an equal share of all files, largest first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from ...config.parallel_layout import ParallelLayout
from ...model.settings import ModelSettings
from ...planner.params import stage_params


@dataclass(frozen=True)
class CheckpointFiles:
    model_file: int        # bytes of one model-states file (the largest stage)
    optimizer_file: int    # bytes of one rank's optimizer shard
    model_files: int       # how many model-states files (TP x PP)
    ranks: int

    @property
    def written_by_one_rank(self) -> int:
        """The most one rank writes in a save (DP rank 0 of the largest stage)."""
        return self.model_file + self.optimizer_file

    @property
    def total(self) -> int:
        return self.model_files * self.model_file + self.ranks * self.optimizer_file

    def sizes(self) -> Dict[str, int]:
        """Every file's bytes, by a name that says what it is (the RNG files left out)."""
        out = {f"model_states_{i}": self.model_file for i in range(self.model_files)}
        out.update({f"optim_states_{r}": self.optimizer_file for r in range(self.ranks) if self.optimizer_file})
        return out


def checkpoint_files(s: ModelSettings, L: ParallelLayout, param_bytes: int) -> CheckpointFiles:
    P = max(r.total for r in stage_params(s, L.tp, L.pp))
    zero0_fp32 = L.zero_stage == 0 and param_bytes == 4
    model = 0 if L.zero_stage == 3 else P * param_bytes + (8 * P if zero0_fp32 else 0)
    optim = 0 if zero0_fp32 else 12 * P // L.dp
    return CheckpointFiles(model, optim, L.tp * L.pp, L.tp * L.pp * L.dp)
