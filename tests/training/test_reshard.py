"""Resume onto a new layout (checkpoint.reshard_on_resume=auto, training/reshard.py).

- The parallel conversion (every rank converts its share of the parameters from the DeepSpeed files,
  without an engine of the checkpoint's layout) writes the universal checkpoint the explicit tool writes
  (export_engine on a trainer of that layout): every tensor, fp32 master and Adam moments, bit for bit,
  and the same training state; for ZeRO-1, TP=2 + SP, and (slow) PP=2, ZeRO-3, TP=2 x PP=2 and bf16 sources.
- End to end: a DP=2 checkpoint resumed on 1 process, and a TP=1 one resumed at TP=2, reshard as they
  load and continue with exactly the losses of a run resumed from `tools/convert_checkpoint.py
  to-universal` of the same checkpoint (the explicit path) (slow; the two-node Slurm test does the
  DP=2 -> DP=1 case on a job requeued onto one node).
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from mot_parallel.convert.universal import Universal
from mot_parallel.testing import run_distributed
from train_utils import TINY, train_body

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def convert_body(overrides):
    """Train 2 steps (checkpoint at 2); export it as the tool does (a trainer of that layout resumes it and
    writes the universal form) and convert it with the parallel converter on the same ranks; rank 0
    returns the run directory."""
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    from mot_parallel.training.checkpoint_files import read_manifest
    from mot_parallel.training.reshard import convert
    cfg = load_config(None, TINY + ["train.steps=2"] + list(overrides))
    Trainer(cfg).train()
    trainer = Trainer(cfg)  # resumes step 2
    run = cfg.run.output_dir
    trainer.export_universal(os.path.join(run, "explicit"))
    step = os.path.join(run, "checkpoints", "step_00000002")
    convert(step, read_manifest(step)["layout"], os.path.join(run, "auto"), cfg, trainer.settings, trainer.engine,
            trainer.topo)
    dist.barrier()
    return run if dist.get_rank() == 0 else None


def assert_same_universal(a, b):
    ua, ub = Universal(a), Universal(b)
    assert sorted(ua.index) == sorted(ub.index) and len(ua.index) > 0
    for name in ua.index:
        assert torch.equal(ua.get(name), ub.get(name)), name
    assert ua.state == ub.state
    for key in ("step", "has_optimizer", "vocab_rows", "vocab_size"):
        assert ua.meta[key] == ub.meta[key], key
    assert ua.meta["has_optimizer"]


SOURCES = {
    "dp2-zero1": (2, ["parallel.zero_stage=1"]),
    "tp2-sp": (2, ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"]),
    "pp2": (2, ["parallel.pipeline_parallel=2"]),
    "dp2-zero3": (2, ["parallel.zero_stage=3"]),
    "tp2-pp2-dp2": (8, ["parallel.tensor_parallel=2", "parallel.pipeline_parallel=2"]),
    "dp2-bf16": (2, ["train.precision=bf16"]),
}
FAST = ("dp2-zero1", "tp2-sp")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in SOURCES])
def test_the_parallel_conversion_writes_what_the_tool_exports(name, tmp_path):
    world, overrides = SOURCES[name]
    run = run_distributed(convert_body, world, args=(overrides + [f"run.output_dir={tmp_path}"],), timeout=600)[0]
    assert_same_universal(os.path.join(run, "explicit"), os.path.join(run, "auto"))


def _explicit_universal(run, out):
    """tools/convert_checkpoint.py to-universal of the run's newest checkpoint (its own layout's world)."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), "to-universal", "--config",
           os.path.join(run, "config.yaml"), "--checkpoint", os.path.join(run, "checkpoints"), "--out", out]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("src,dst", [((2, []), (1, [])),                                         # DP=2 -> DP=1
                                     ((2, []), (2, ["parallel.tensor_parallel=2"]))])            # TP=1 -> TP=2
def test_a_resume_onto_a_new_layout_continues_as_the_explicit_path(src, dst, tmp_path):
    first = tmp_path / "first"
    run_distributed(train_body, src[0], args=(src[1] + [f"run.output_dir={first}", "train.steps=3"],), timeout=600)
    auto, universal, explicit = tmp_path / "auto", str(tmp_path / "universal"), tmp_path / "explicit"
    shutil.copytree(first, auto)
    got = run_distributed(train_body, dst[0], args=(dst[1] + [f"run.output_dir={auto}"],), timeout=600)[0]
    assert not os.path.exists(auto / "checkpoints" / ".reshard")  # the universal copy is gone
    _explicit_universal(str(first), universal)
    want = run_distributed(train_body, dst[0], args=(dst[1] + [f"run.output_dir={explicit}",
                                                               f"checkpoint.resume={universal}"],), timeout=600)[0]
    assert sorted(want) == [4, 5, 6, 7, 8]
    for step in want:
        assert got[step]["loss"] == want[step]["loss"], (step, got[step]["loss"], want[step]["loss"])


def test_shares_cover_every_parameter_once_in_order_and_balance_the_bytes():
    """Random sizes (1 to 10^8, a few huge), 1 to 300 ranks: contiguous runs covering each index once; no
    rank gets more than its fair share plus the largest parameter."""
    from mot_parallel.training.reshard import shares
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = np.exp(rng.uniform(0, np.log(1e8), int(rng.integers(1, 400)))).astype(int).tolist()
        world = int(rng.integers(1, 300))
        runs = shares(sizes, world)
        assert len(runs) == world and [i for r in runs for i in r] == list(range(len(sizes)))
        fair = sum(sizes) / world
        assert max(sum(sizes[i] for i in r) for r in runs) <= fair + max(sizes) + 1e-9
