"""Checkpoints and resume lose nothing and replace nothing silently (issue: hardening §2).

One short run (1 process, checkpoints at steps 4 and 8) is copied into each test, which then damages it
the way a crash, a full disk or a hostile file would. Resume decisions are made before any process group
(training/resume.py), so most checks call them directly; the rest train on gloo processes."""
import os
import shutil

import pytest
import torch

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.testing import DistributedTestError, run_distributed
from mot_parallel.config.layout import ParallelLayout
from mot_parallel.training.checkpoint_files import CheckpointError, read_manifest, write_manifest
from mot_parallel.training.resume import resolve_resume
from train_utils import TINY, losses, train_body


def _cfg(run, *extra):
    return load_config(None, TINY + [f"run.output_dir={run}", "checkpoint.interval=4", *extra])


def _resume(run, *extra):
    cfg = _cfg(run, *extra)
    return resolve_resume(cfg, validate(cfg, 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    full = run_distributed(train_body, 1, args=([f"run.output_dir={run}", "checkpoint.interval=4"],), timeout=300)[0]
    return run, full


@pytest.fixture
def run(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst


def _step_file(run, tag, pattern):
    d = run / "checkpoints" / tag
    return d / next(f for f in sorted(os.listdir(d)) if pattern in f)


@pytest.mark.parametrize("damage", ["missing", "garbled", "stale"])
def test_a_broken_latest_pointer_never_restarts_the_run(run, damage):
    latest = run / "checkpoints" / "latest"
    if damage == "missing":
        latest.unlink()
    else:
        latest.write_bytes(b"\xff\xfe garbage" if damage == "garbled" else b"step_00000004")
    target = _resume(run)
    assert target is not None and target.tag == "step_00000008"


def test_a_fresh_start_refuses_to_overwrite_existing_checkpoints(run):
    with pytest.raises(CheckpointError, match="checkpoint.resume=none.*would overwrite"):
        _resume(run, "checkpoint.resume=none")


def test_a_truncated_shard_is_named_and_the_previous_checkpoint_only_on_request(run):
    shard = _step_file(run, "step_00000008", "optim_states")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(CheckpointError, match=f"(?s){shard.name}.*truncated.*on_corrupt=previous"):
        _resume(run)
    assert _resume(run, "checkpoint.on_corrupt=previous").tag == "step_00000004"


def test_a_missing_rng_file_is_named(run):
    rng_file = run / "checkpoints" / "step_00000008" / "rng_rank_0.pt"
    rng_file.unlink()
    with pytest.raises(CheckpointError, match="rng_rank_0.pt: missing"):
        _resume(run)


@pytest.mark.parametrize("change", ["parallel.zero_stage=3", "parallel.tensor_parallel=2"])
def test_another_layout_points_to_the_reshard_tool(run, change):
    cfg = _cfg(run, change, "checkpoint.reshard_on_resume=refuse")
    with pytest.raises(CheckpointError, match="convert_checkpoint.py reshard.*reshard_on_resume=auto"):
        resolve_resume(cfg, validate(cfg, 2 if "tensor" in change else 1))


@pytest.mark.parametrize("change", ["parallel.zero_stage=3", "parallel.tensor_parallel=2"])
def test_another_layout_is_resharded_by_default_and_unreadable_files_are_named(run, change):
    """checkpoint.reshard_on_resume=auto (the default) resumes it through a reshard (test_reshard.py); one
    whose DeepSpeed files are gone is refused before any process group, naming the file."""
    cfg = _cfg(run, change)
    target = resolve_resume(cfg, validate(cfg, 2 if "tensor" in change else 1))
    assert target.tag == "step_00000008" and target.reshard_from == read_manifest(target.path)["layout"]
    _step_file(run, "step_00000008", "optim_states").unlink()  # gone, the manifest rewritten to match
    write_manifest(target.path, 8, ParallelLayout(zero_stage=1))
    with pytest.raises(CheckpointError, match="cannot reshard it: 1 of its DeepSpeed files are missing, e.g. zero_pp"):
        resolve_resume(cfg, validate(cfg, 2 if "tensor" in change else 1))
    write_manifest(target.path, 8, ParallelLayout(zero_stage=0))  # fp32 without ZeRO: torch's own optimizer state
    with pytest.raises(CheckpointError, match="cannot reshard it: it was written without ZeRO in fp32"):
        resolve_resume(cfg, validate(cfg, 2 if "tensor" in change else 1))


def test_resuming_an_older_checkpoint_never_overwrites_a_newer_one(run):
    older = run / "checkpoints" / "step_00000004"
    with pytest.raises(CheckpointError, match="would later overwrite the newer checkpoints"):
        _resume(run, f"checkpoint.resume={older}")
    assert _resume(run.parent / "elsewhere", f"checkpoint.resume={older}").tag == "step_00000004"


def test_resume_from_nowhere_is_a_clear_error(run):
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        _resume(run.parent / "fresh", f"checkpoint.resume={run / 'nope'}")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mot_ckpt_exploit",))


def test_a_crafted_deepspeed_file_is_refused_not_executed(run):
    """DeepSpeed itself loads with weights_only=False: the scan must stop a file that would run code."""
    marker = "/tmp/mot_ckpt_exploit"
    if os.path.exists(marker):
        os.remove(marker)
    step = run / "checkpoints" / "step_00000008"
    shard = _step_file(run, "step_00000008", "model_states")
    state = torch.load(shard, weights_only=False)
    state["evil"] = _Exploit()
    torch.save(state, shard)
    manifest = read_manifest(str(step))  # a consistent manifest: the size check alone would not catch it
    manifest["files"][shard.name] = os.path.getsize(shard)
    import json
    (step / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(DistributedTestError, match="refused.*os.system|refused.*posix.system"):
        run_distributed(train_body, 1, args=([f"run.output_dir={run}", "checkpoint.interval=4"],), timeout=300)
    assert not os.path.exists(marker)


def test_staging_leftovers_are_removed_and_resume_is_exact(run, trained):
    leftover = run / "checkpoints" / ".staging" / "step_00000012"
    leftover.mkdir(parents=True)
    (leftover / "half_written.pt").write_bytes(b"\0" * 10)
    (run / "metrics.jsonl").unlink()
    got = run_distributed(train_body, 1, args=([f"run.output_dir={run}", "checkpoint.interval=4",
                                                "train.steps=10"],), timeout=300)[0]
    assert not (run / "checkpoints" / ".staging" / "step_00000012").exists()
    assert sorted(got) == [9, 10]  # resumed at step 8, trained 9 and 10


def test_an_unwritable_checkpoint_dir_fails_at_start_up(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(DistributedTestError, match=f"checkpoint.dir {blocker}/ckpt is not writable"):
        run_distributed(train_body, 1, args=([f"run.output_dir={tmp_path / 'run'}",
                                              f"checkpoint.dir={blocker}/ckpt"],), timeout=300)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def _disk_full_body(run):
    """torch.save fails the way PyTorch's C++ writer does when the disk fills up."""
    import mot_parallel.training.rng as rng_module

    def full(*_a, **_k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: "
                           "PytorchStreamWriter failed writing file data/0: file write failed")
    rng_module.save = full
    return train_body([f"run.output_dir={run}", "checkpoint.interval=4"])


def test_disk_full_during_save_names_the_path_and_enospc(tmp_path):
    with pytest.raises(DistributedTestError, match=r"writing checkpoint .*step_00000004 failed \(.* GiB free\): "
                                                   r"the disk is full \(ENOSPC\)"):
        run_distributed(_disk_full_body, 1, args=(str(tmp_path / "run"),), timeout=300)
    assert not (tmp_path / "run" / "checkpoints" / "step_00000004").exists()


def test_bad_resume_values_are_refused_before_training(run):
    with pytest.raises(ConfigError, match="checkpoint.on_corrupt"):
        _cfg(run, "checkpoint.on_corrupt=maybe")
    assert losses(run)[8]["loss"] > 0  # the copied run itself is intact
