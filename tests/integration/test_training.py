"""Training behaviour: exact kill-and-resume, atomic checkpoints under a crash mid-save, SIGTERM and Ctrl-C,
keep-last-K, ZeRO-3 with micro-batches lacking a modality, optimizer groups (weight decay, per-modality
LR, freezing), the LR schedule, the DeepSpeed JSON and the metrics files."""
import json
import os
import signal

import numpy as np
import pytest
import torch

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.data import IndexedWriter
from mot_parallel.testing import DistributedTestError, run_distributed
from mot_parallel.training.ds_config import deepspeed_config
from mot_parallel.training.optim import WarmupDecayLR, lr_factor
from train_utils import TINY, losses, train_body


def _run(world, overrides, env=None):
    return run_distributed(train_body, world, args=(overrides,), timeout=300, env=env)[0]


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    """Die hard after step 5 (checkpoint at step 3), restart: steps 4-8 equal the uninterrupted run's
    losses exactly (CPU fp32), with DP=2 so loader state, optimizer and RNG all have to come back."""
    full = _run(2, [f"run.output_dir={tmp_path / 'full'}", "parallel.zero_stage=2"])
    run = [f"run.output_dir={tmp_path / 'killed'}", "parallel.zero_stage=2", "checkpoint.interval=3"]
    with pytest.raises(DistributedTestError, match="exit code 17"):
        _run(2, run, env={"MOT_FAULT": "kill_after_step:5"})
    assert open(tmp_path / "killed" / "checkpoints" / "latest").read() == "step_00000003"
    resumed = _run(2, run)
    assert sorted(resumed) == list(range(1, 9))  # the replayed steps replaced the killed run's lines
    for step in range(1, 9):
        for key in ("loss", "loss/text", "loss/image", "grad_norm", "lr"):
            assert resumed[step][key] == full[step][key], (step, key)


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path):
    run = [f"run.output_dir={tmp_path}", "checkpoint.interval=4"]
    full = _run(1, [f"run.output_dir={tmp_path / 'full'}"])
    with pytest.raises(DistributedTestError, match="exit code 17"):  # saves step 4, dies saving step 8
        _run(1, run, env={"MOT_FAULT": "crash_in_save:2"})
    ckpt = tmp_path / "checkpoints"
    assert open(ckpt / "latest").read() == "step_00000004" and not (ckpt / "step_00000008").exists()
    resumed = _run(1, run)                                         # loads step 4 and finishes
    assert [resumed[s]["loss"] for s in range(5, 9)] == [full[s]["loss"] for s in range(5, 9)]
    assert open(ckpt / "latest").read() == "step_00000008"
    assert sorted(p for p in os.listdir(ckpt) if p.startswith("step_")) == ["step_00000004", "step_00000008"]


def _signal_body(overrides, sig="SIGTERM", ranks=(1,)):
    """Send `sig` to ourselves on `ranks` during step 3; the trainer must checkpoint and stop early."""
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + list(overrides))
    def begin(step):
        if step == 3 and dist.get_rank() in ranks:
            os.kill(os.getpid(), getattr(signal, sig))
    trainer = Trainer(cfg, on_step_begin=begin)
    trainer.train()
    return trainer.step


def test_sigterm_checkpoints_and_stops(tmp_path):
    """Only one rank gets the signal: they must still agree, save step 3 and stop there."""
    steps = run_distributed(_signal_body, 2, args=([f"run.output_dir={tmp_path}"],), timeout=300)
    assert steps == [3, 3]
    assert open(tmp_path / "checkpoints" / "latest").read() == "step_00000003"


def test_ctrl_c_checkpoints_and_stops_like_sigterm(tmp_path):
    """SIGINT (Ctrl-C reaches every process of the group): a checkpoint at the step reached, a clean exit."""
    steps = run_distributed(_signal_body, 1, args=([f"run.output_dir={tmp_path}"], "SIGINT", (0,)), timeout=300)
    assert steps == [3]
    assert open(tmp_path / "checkpoints" / "latest").read() == "step_00000003"


def test_a_second_ctrl_c_stops_at_once_unsaved():
    """SIGTERM then Ctrl-C: one stop request (SIGTERM's); Ctrl-C again: KeyboardInterrupt, no more waiting."""
    import time

    from mot_parallel.training.supervision import StopRequest
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = StopRequest()
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_ctrl_c_before_training_is_one_error_line(tmp_path, monkeypatch, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("pretrain", os.path.join(os.path.dirname(__file__), "..", "..", "launch",
                                                                           "pretrain.py"))
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(pretrain, "load_config", interrupted)
    with pytest.raises(SystemExit) as stop:
        pretrain.main(["--config", "configs/demo_cpu.yaml"])
    err = capsys.readouterr().err
    assert stop.value.code == 130 and err.startswith("error: interrupted (SIGINT)") and "Traceback" not in err


def test_keep_last(tmp_path):
    _run(1, [f"run.output_dir={tmp_path}", "checkpoint.interval=2", "checkpoint.keep_last=2"])
    names = sorted(p for p in os.listdir(tmp_path / "checkpoints") if p.startswith("step_"))
    assert names == ["step_00000006", "step_00000008"]


def _sparse_corpus(prefix):
    """Text documents, a few images, one speech document: most micro-batches lack speech or images."""
    rng = np.random.default_rng(0)
    with IndexedWriter(prefix, np.uint16, multimodal=True) as w:
        for i in range(200):
            if i == 7:
                w.add_document([(rng.integers(448, 512, 20), 2)])
            elif i % 25 == 0:
                w.add_document([(rng.integers(0, 256, 6), 0), (rng.integers(256, 448, 64), 1)])
            else:
                w.add_document([(rng.integers(0, 256, int(rng.integers(10, 60))), 0)])
        w.close({"modalities": ["text", "image", "speech"], "vocab_size": 512})
    return prefix


def test_zero3_with_micro_batches_lacking_modalities(tmp_path):
    prefix = _sparse_corpus(str(tmp_path / "sparse"))
    got = _run(2, [f"run.output_dir={tmp_path / 'run'}", f"data.path={prefix}", "parallel.zero_stage=3",
                   "train.steps=6", "train.micro_batch_size=1", "train.global_batch_size=4"])
    assert len(got) == 6 and all(np.isfinite(r["loss"]) for r in got.values())
    assert any(r["tokens/speech"] == 0 for r in got.values())  # whole global batches without speech


def _groups_body(overrides):
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + list(overrides))
    t = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    groups = [(g["weight_decay"], g["lr"]) for g in t.engine.optimizer.param_groups]
    t.train()
    after = dict(t.model.named_parameters())
    changed = {n: not torch.equal(before[n], after[n].detach()) for n in before}
    return groups, changed


def test_optimizer_groups_and_frozen_modality(tmp_path):
    groups, changed = run_distributed(_groups_body, 1, args=(
        [f"run.output_dir={tmp_path}", "train.optimizer.modality_lr_scale={image: 0.0, speech: 0.5}"],),
        timeout=300)[0]
    warm = lr_factor(0, load_config(None, TINY))
    assert sorted(groups) == sorted({(wd, 1e-2 * s * warm) for wd in (0.0, 0.1) for s in (0.0, 0.5, 1.0)})
    frozen = [n for n in changed if n.endswith(".image")]
    assert frozen and not any(changed[n] for n in frozen)            # LR scale 0 freezes the image copies
    assert all(changed[n] for n in changed if n.endswith(".text") or n.endswith(".speech"))


def test_lr_schedule():
    cfg = load_config(None, ["train.steps=100", "train.lr_schedule.warmup_steps=10",
                             "train.lr_schedule.min_lr_ratio=0.1"])
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02) and f[99] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupDecayLR(opt, cfg)
    sched.step()                                       # DeepSpeed's call: step(**{})
    assert sched.get_last_lr() == [pytest.approx(f[1])]
    for call in (lambda: sched.step(64), lambda: sched.step(increment=64)):  # never silently ignored
        with pytest.raises(ValueError, match="takes no"):
            call()
    assert sched.last_step == 1


def test_deepspeed_config_generation():
    cfg = load_config(None, ["train.micro_batch_size=2", "train.global_batch_size=16", "parallel.zero_stage=2",
                             "deepspeed={zero_optimization: {overlap_comm: true}, wall_clock_breakdown: true}"])
    ds = deepspeed_config(cfg, validate(cfg, 4), torch.float32)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 2, 16)
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True} and ds["wall_clock_breakdown"] is True
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["gradient_clipping"] == 1.0
    bad = load_config(None, ["deepspeed={train_batch_size: 32}"])
    with pytest.raises(ConfigError, match="deepspeed.train_batch_size=32 contradicts train.global_batch_size"):
        deepspeed_config(bad, validate(bad, 1), torch.float32)


def test_run_directory_contents(tmp_path):
    _run(1, [f"run.output_dir={tmp_path}", "logging.tensorboard=true", "logging.interval=2"])
    rec = losses(tmp_path)
    assert sorted(rec) == [2, 4, 6, 8]
    keys = {"step", "loss", "loss/text", "loss/image", "loss/speech", "tokens/text", "tokens/image", "tokens/speech",
            "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu", "step_time_s", "peak_mem_gb",
            "time/data_s", "time/forward_s", "time/backward_s", "time/optimizer_s"}
    assert keys <= set(rec[2])
    assert rec[2]["tflops_per_device"] > 0 and rec[2]["mfu"] is None  # no peak for a CPU unless configured
    assert os.listdir(tmp_path / "tensorboard")
    assert load_config(str(tmp_path / "config.yaml")).train.steps == 8
    assert json.load(open(tmp_path / "deepspeed_config.json"))["zero_optimization"]["stage"] == 1
