"""Checkpoint conversion (Hugging Face conversion and the single-file export: tests/convert/test_hf_import.py):
- reshard: a TP=2,PP=2 run -> TP=1,PP=1 -> TP=2,PP=1 round-trips bit-exactly (weights and Adam states,
  through the universal form), and training resumed in the new layout reproduces the original run's
  losses (<= 1e-4 relative, as any two layouts)."""
import os
import subprocess
import sys

import torch

from mot_parallel.convert import Universal
from mot_parallel.testing import run_distributed
from train_utils import TINY, losses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = [sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py")]


def _train(overrides):
    import torch.distributed as dist

    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + list(overrides))
    Trainer(cfg).train()
    dist.barrier()
    return losses(cfg.run.output_dir) if dist.get_rank() == 0 else None


def _tensors(path):
    u = Universal(path)
    return {k: u.get(k) for k in u.index}, u.state


def test_reshard_round_trip_and_resume(tmp_path):
    tp2pp2 = ["parallel.tensor_parallel=2", "parallel.pipeline_parallel=2", "parallel.zero_stage=1"]
    ref = run_distributed(_train, 4, args=(tp2pp2 + [f"run.output_dir={tmp_path / 'A'}", "checkpoint.interval=4"],),
                          timeout=300)[0]
    cfg = tmp_path / "cfg.yaml"
    from mot_parallel.config import dump_config, load_config
    dump_config(load_config(None, TINY), str(cfg))

    def tool(*args):
        out = subprocess.run(TOOL + list(args), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    step4 = str(tmp_path / "A" / "checkpoints" / "step_00000004")
    tool("reshard", "--config", str(cfg), "--checkpoint", step4, "--src", *tp2pp2,
         "--dst", "parallel.tensor_parallel=1", "--run-dir", str(tmp_path / "B"))
    tool("to-universal", "--config", str(cfg), "--checkpoint", str(tmp_path / "B" / "checkpoints"),
         "--out", str(tmp_path / "uB"), "parallel.tensor_parallel=1", f"run.output_dir={tmp_path / 'B'}")
    tool("reshard", "--config", str(cfg), "--checkpoint", str(tmp_path / "B" / "checkpoints"),
         "--src", "parallel.tensor_parallel=1", "--dst", "parallel.tensor_parallel=2", "--run-dir", str(tmp_path / "C"))
    tool("to-universal", "--config", str(cfg), "--checkpoint", str(tmp_path / "C" / "checkpoints"),
         "--out", str(tmp_path / "uC"), "parallel.tensor_parallel=2", f"run.output_dir={tmp_path / 'C'}")
    a, state_a = _tensors(str(tmp_path / "B" / "universal"))  # written from the TP=2,PP=2 checkpoint
    for other in ("uB", "C/universal", "uC"):
        b, state_b = _tensors(str(tmp_path / other))
        assert a.keys() == b.keys() and any("/exp_avg_sq" in k for k in a)
        for k in a:
            assert torch.equal(a[k], b[k]), (other, k)
        assert state_a == state_b
    # training resumes in TP=2,PP=1 from the resharded checkpoint and reproduces steps 5-8
    resumed = run_distributed(_train, 2, args=(["parallel.tensor_parallel=2", f"run.output_dir={tmp_path / 'C'}"],),
                              timeout=300)[0]
    for step in range(5, 9):
        assert abs(resumed[step]["loss"] - ref[step]["loss"]) <= 1e-4 * ref[step]["loss"], step


def _export_body(overrides, out):
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    trainer = Trainer(load_config(None, TINY + list(overrides)))
    trainer.train()
    trainer.export_universal(out)
    return trainer.step


def test_zero0_round_trip_through_tp2(tmp_path):
    """ZeRO-0 keeps Adam states in the plain torch optimizer: export from TP=1, import into TP=2 (2 ranks),
    export again: identical."""
    run_distributed(_export_body, 1, args=(["parallel.zero_stage=0", "train.steps=2", f"run.output_dir={tmp_path / 'a'}"],
                                           str(tmp_path / "u1")), timeout=300)
    run_distributed(_export_body, 2, args=(["parallel.zero_stage=0", "parallel.tensor_parallel=2", "train.steps=2",
                                            f"checkpoint.resume={tmp_path / 'u1'}", f"run.output_dir={tmp_path / 'b'}"],
                                           str(tmp_path / "u2")), timeout=300)
    a, sa = _tensors(str(tmp_path / "u1"))
    b, sb = _tensors(str(tmp_path / "u2"))
    assert a.keys() == b.keys() and any(k.endswith("/exp_avg") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a) and sa == sb


def _z1_reference(out, universal):
    """ZeRO-1 on one process, 4 steps; exports a universal checkpoint after step 2 (mid-run)."""
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + ["train.steps=4", f"run.output_dir={out}"])
    trainer = Trainer(cfg, on_step_end=lambda step: trainer.export_universal(universal) if step == 2 else None)
    trainer.train()
    return losses(cfg.run.output_dir)


def _z3_resume(out, universal, again):
    """ZeRO-3 on DP=2 starts from the universal checkpoint, exports it back untouched, trains to step 4."""
    import torch.distributed as dist

    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + ["train.steps=4", "parallel.zero_stage=3", f"checkpoint.resume={universal}",
                                    f"run.output_dir={out}"])
    trainer = Trainer(cfg)
    trainer.export_universal(again)
    trainer.train()
    dist.barrier()
    return losses(cfg.run.output_dir) if dist.get_rank() == 0 else None


def test_zero3_imports_a_universal_checkpoint(tmp_path):
    """ZeRO-1 (1 process) -> universal at step 2 -> ZeRO-3 on DP=2: the import round-trips bit-exactly
    (weights, AdamW states, step, schedule, loader) and steps 3-4 reproduce the ZeRO-1 run's losses
    (<= 1e-4 relative, as any two layouts)."""
    u1, u2 = str(tmp_path / "u1"), str(tmp_path / "u2")
    ref = run_distributed(_z1_reference, 1, args=(str(tmp_path / "a"), u1), timeout=300)[0]
    resumed = run_distributed(_z3_resume, 2, args=(str(tmp_path / "b"), u1, u2), timeout=300)[0]
    a, sa = _tensors(u1)
    b, sb = _tensors(u2)
    assert a.keys() == b.keys() and any(k.endswith("/exp_avg_sq") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert sa == sb and sa["step"] == 2
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert abs(resumed[step]["loss"] - ref[step]["loss"]) <= 1e-4 * ref[step]["loss"], step
