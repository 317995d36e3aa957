"""Launcher discovery from faked environments (torchrun, deepspeed, Open MPI, MPICH, Slurm, none),
and real launches: torchrun and mpirun starting two processes of the same entry point."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from mot_parallel.distributed import detect_launch_env, expand_hostlist
from mot_parallel.testing import free_port


def test_nothing_means_single_process():
    env = detect_launch_env({})
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (0, 1, 0, "none")


def test_torchrun():
    env = detect_launch_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                             "MASTER_ADDR": "n0", "MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 4)
    assert (env.master_addr, env.master_port, env.launcher) == ("n0", 1234, "torchrun")


def test_deepspeed_launcher_passes_local_rank():
    env = detect_launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                             "MASTER_PORT": "29500", "CROSS_RANK": "0", "LOCAL_SIZE": "2"}, argv=["--local_rank=1"])
    assert (env.rank, env.world_size, env.local_world_size, env.launcher) == (1, 2, 2, "deepspeed")


def test_open_mpi_and_mpich():
    env = detect_launch_env({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
                             "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
                             "MASTER_ADDR": "10.0.0.1"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.launcher) == (3, 4, 1, 2, "mpi")
    assert env.master_addr == "10.0.0.1"
    env = detect_launch_env({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0"}, resolve_mpi_master=False)
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (2, 3, 0, "mpi")


def test_slurm_srun_one_task_per_gpu():
    env = detect_launch_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16",
                             "SLURM_LOCALID": "1", "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_JOB_ID": "4242",
                             "SLURM_JOB_NODELIST": "gpu[007-008]"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (9, 16, 1, 8)
    assert (env.master_addr, env.master_port, env.launcher) == ("gpu007", 10000 + 4242, "slurm")


def test_deepspeed_inside_srun_prefers_the_launcher_variables():
    # mode (a): one srun task per node runs the deepspeed launcher; its children see both sets
    env = detect_launch_env({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a[1-2]",
                             "RANK": "13", "WORLD_SIZE": "16", "LOCAL_RANK": "5", "MASTER_ADDR": "a1",
                             "MASTER_PORT": "29600", "CROSS_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (13, 16, 5, "deepspeed")


def test_expand_hostlist():
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    assert expand_hostlist("node9") == ["node9"]
    assert expand_hostlist("a[8-11]") == ["a8", "a9", "a10", "a11"]


_PROBE = ("import json,sys; from mot_parallel.distributed import init_distributed; import torch.distributed as d;"
          "c=init_distributed(); import torch; x=torch.ones(1); d.all_reduce(x);"
          "print(json.dumps([c.launcher, c.rank, c.world_size, c.backend, int(x.item()), torch.get_num_threads()]))")


def _run(cmd, env_extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(env_extra)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return sorted(re.findall(r'\["\w+", \d+, \d+, "\w+", \d+, \d+\]', out.stdout))  # ranks' lines may interleave


def test_real_torchrun():
    lines = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                  "--no-python", sys.executable, "-c", _PROBE], {})
    # torchrun sets OMP_NUM_THREADS=1 for several processes a node, and a set OMP_NUM_THREADS is kept
    assert lines == ['["torchrun", 0, 2, "gloo", 2, 1]', '["torchrun", 1, 2, "gloo", 2, 1]']


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="no mpirun (apt: openmpi-bin)")
def test_real_mpirun():
    pytest.importorskip("mpi4py")
    lines = _run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", sys.executable, "-c", _PROBE],
                 {"MASTER_PORT": str(free_port()), "OMPI_MCA_btl": "self,tcp"})
    # threads: the share of the cores mpirun lets each rank use (it may bind ranks), so not asserted here
    assert [line.rsplit(",", 1)[0] for line in lines] == ['["mpi", 0, 2, "gloo", 2', '["mpi", 1, 2, "gloo", 2']
