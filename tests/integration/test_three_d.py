"""3-D parallelism at 8 ranks: TP=2 with sequence parallelism, PP=2, DP=2 with ZeRO-1 (the layout of the 7B
configs, all three at once) trains the demo config (text, image, speech) and the Transfusion demo config
(text + diffused images) to the per-step losses of one process: total and per-modality training losses
and the validation losses agree within 1e-5 relative over 10 steps (fp32; the sums run in other orders).
On the two emulated Slurm nodes (conftest.two_nodes; 4 ranks a node: each TP group inside a node, the
pipeline across them) where network namespaces and Slurm are available, else on 8 local ranks. Slow;
the default suite runs the same layout on tiny shapes (test_training_layouts.py, tp2-sp-pp2-dp2)."""
import os
import sys

import pytest

from mot_parallel.testing import run_distributed
from slurm_jobs import finished, loss_keys, records, submit
from train_utils import train_config_body

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, RTOL = 10, 1e-5
COMMON = [f"train.steps={STEPS}", "train.eval_interval=5", "train.eval_iters=2", "logging.interval=1",
          "logging.tensorboard=false", "checkpoint.interval=0", "data.demo_documents=1000"]
THREE_D = ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true", "parallel.pipeline_parallel=2",
           "parallel.zero_stage=1"]
CONFIGS = {"demo": "demo_cpu.yaml", "transfusion": "demo_transfusion_cpu.yaml"}
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(CONFIGS))
def test_three_d_matches_one_process(name, two_nodes, tmp_path):
    config = os.path.join(ROOT, "configs", CONFIGS[name])
    one, run = str(tmp_path / "one"), str(tmp_path / "three_d")
    if isinstance(two_nodes, str):  # no namespaces or no Slurm: 8 local ranks
        run_distributed(train_config_body, 1, args=(config, COMMON + [f"run.output_dir={one}"]), timeout=1800)
        run_distributed(train_config_body, 8, args=(config, COMMON + THREE_D + [f"run.output_dir={run}"]),
                        timeout=1800)
    else:  # the reference through the same launcher: one task on node1
        finished(two_nodes, one, submit(two_nodes, one, 1, 1, *COMMON, config=config), timeout=1800)
        log = finished(two_nodes, run, submit(two_nodes, run, 2, 4, *COMMON, *THREE_D, config=config),
                       timeout=1800)
        assert "placement: node1: ranks 0-3 | node2: ranks 4-7 (2 nodes, 8 ranks)" in log, log[-3000:]
        assert "every TP group lies inside one node (TP2: [0-1] [2-3] [4-5] [6-7]); PP groups cross nodes" in log
    worst = 0.0
    for kind in ("train", "valid"):
        want, got = records(one, kind), records(run, kind)
        assert sorted(got) == sorted(want) == (list(range(1, STEPS + 1)) if kind == "train" else [5, 10])
        for step, ref in want.items():
            for key in loss_keys(ref):
                if ref[key] is None:
                    assert got[step][key] is None, (kind, step, key)
                    continue
                rel = abs(got[step][key] - ref[key]) / abs(ref[key])
                worst = max(worst, rel)
                assert rel <= RTOL, (name, kind, step, key, got[step][key], ref[key])
    print(f"{name}: largest relative loss difference over {STEPS} steps and 2 evaluations: {worst:.2e}",
          file=sys.stderr)
