"""Who launched us? Rank, world size, local rank and rendezvous address from the environment.

Supported, in order of precedence:
  torchrun / deepspeed launcher  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (deepspeed also
                                 passes --local_rank=N on the command line; we accept and ignore it)
  mpirun (Open MPI / MPICH)      OMPI_COMM_WORLD_* or PMI_*; master = rank 0's address via mpi4py
  Slurm srun                     SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS / SLURM_NTASKS;
                                 master = first host of SLURM_STEP_NODELIST / SLURM_JOB_NODELIST
  nothing                        world size 1, no process group needed
Pure functions of `environ`, so every route is testable with a faked environment.
"""
from __future__ import annotations

import itertools
import os
import re
import socket
from dataclasses import dataclass
from typing import List, Mapping, Optional

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: Optional[str]
    master_port: int
    launcher: str  # "torchrun" | "deepspeed" | "env" | "mpi" | "slurm" | "none"

    def export(self, environ=os.environ) -> None:
        """Write the torch.distributed env:// variables (what DeepSpeed and Megatron read too)."""
        environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.local_rank),
                       LOCAL_WORLD_SIZE=str(self.local_world_size), MASTER_PORT=str(self.master_port))
        if self.master_addr:
            environ["MASTER_ADDR"] = self.master_addr


def expand_hostlist(hostlist: str) -> List[str]:
    """Expand Slurm's compressed host list: 'gpu[01-03,07],login1,r[1-2]n[1-2]' -> individual hosts."""
    hosts, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist + ","):  # split on commas outside brackets
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            if hostlist[start:i].strip():
                hosts.extend(_expand_one(hostlist[start:i].strip()))
            start = i + 1
    return hosts


def _expand_one(pattern: str) -> List[str]:
    parts = re.split(r"(\[[^\]]*\])", pattern)
    choices = []
    for part in parts:
        if not (part.startswith("[") and part.endswith("]")):
            choices.append([part])
            continue
        values = []
        for item in part[1:-1].split(","):
            lo, _, hi = item.partition("-")
            if not hi:
                values.append(lo)
                continue
            width = len(lo) if lo.startswith("0") else 0
            values += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
        choices.append(values)
    return ["".join(combo) for combo in itertools.product(*choices)]


def _int(environ: Mapping[str, str], *names: str, default: Optional[int] = None) -> Optional[int]:
    for name in names:
        if environ.get(name, "").strip():
            return int(environ[name].split("(")[0].split(",")[0])  # SLURM_TASKS_PER_NODE looks like '4(x2)'
    return default


def _mpi_master_addr(rank: int) -> str:
    """Broadcast rank 0's address over MPI (what DeepSpeed's mpi discovery does)."""
    from mpi4py import MPI  # the `mpi` extra
    addr = socket.gethostbyname(socket.gethostname()) if rank == 0 else None
    return MPI.COMM_WORLD.bcast(addr, root=0)


def detect_launch_env(environ: Optional[Mapping[str, str]] = None, argv: Optional[List[str]] = None,
                      resolve_mpi_master: bool = True) -> LaunchEnv:
    env = os.environ if environ is None else environ
    argv = [] if argv is None else argv
    port = _int(env, "MASTER_PORT", default=DEFAULT_PORT)
    if "RANK" in env and "WORLD_SIZE" in env:
        if "TORCHELASTIC_RUN_ID" in env:
            launcher = "torchrun"
        elif any(a.startswith("--local_rank") for a in argv) or "CROSS_RANK" in env:
            launcher = "deepspeed"
        else:
            launcher = "env"
        world = int(env["WORLD_SIZE"])
        return LaunchEnv(int(env["RANK"]), world, _int(env, "LOCAL_RANK", default=0),
                         _int(env, "LOCAL_WORLD_SIZE", "LOCAL_SIZE", default=world),
                         env.get("MASTER_ADDR", "127.0.0.1"), port, launcher)
    mpi_rank = _int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    if mpi_rank is not None:
        world = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
        local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MPI_LOCAL_RANK", default=0)
        local_world = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MPI_LOCAL_SIZE", default=world)
        addr = env.get("MASTER_ADDR") or (_mpi_master_addr(mpi_rank) if resolve_mpi_master and world > 1 else None)
        return LaunchEnv(mpi_rank, world, local, local_world, addr or "127.0.0.1", port, "mpi")
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        world = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (expand_hostlist(nodelist)[0] if nodelist else "127.0.0.1")
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            port = 10000 + int(env["SLURM_JOB_ID"]) % 50000  # jobs sharing a node don't collide
        local_world = _int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE",
                           default=world)
        return LaunchEnv(int(env["SLURM_PROCID"]), world, _int(env, "SLURM_LOCALID", default=0),
                         local_world, addr, port, "slurm")
    return LaunchEnv(0, 1, 0, 1, None, port, "none")
