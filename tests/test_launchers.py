"""launch/pretrain.py end to end under every launcher (the README main command is the deepspeed one):
each trains 4 steps of a tiny model on the demo corpus and writes metrics with falling-or-finite loss;
bad configs fail before any process group exists, naming the key."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mot_parallel.testing import free_port
from train_utils import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "pretrain.py")
BIN = os.path.dirname(sys.executable)


def _launch(cmd, run_dir, extra=()):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    args = cmd + [SCRIPT, "--config", os.path.join(ROOT, "configs", "demo_cpu.yaml")] + TINY + \
        ["train.steps=4", f"run.output_dir={run_dir}", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


LAUNCHERS = {
    "deepspeed": lambda: [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())],
    "torchrun": lambda: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         f"--master_port={free_port()}"],
    "mpirun": lambda: ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x",
                       f"MASTER_PORT={free_port()}", sys.executable],
    "python": lambda: [sys.executable],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_pretrain_under_launcher(launcher, tmp_path):
    if launcher == "mpirun" and (shutil.which("mpirun") is None or pytest.importorskip("mpi4py") is None):
        pytest.skip("no mpirun")
    out = _launch(LAUNCHERS[launcher](), tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["loss"] < records[0]["loss"]
    assert "step 4/4" in out.stdout and os.path.isfile(tmp_path / "checkpoints" / "latest")


def test_bad_config_fails_before_distributed_start(tmp_path):
    out = _launch([sys.executable], tmp_path, ["parallel.tensor_parallel=3"])
    assert out.returncode != 0 and "model.num_heads=4 is not divisible by parallel.tensor_parallel=3" in out.stderr
    assert not os.path.exists(tmp_path / "metrics.jsonl")
