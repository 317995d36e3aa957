"""The checkpoint manager and the run directory keep what they must and refuse what they cannot vouch for.

The manager is driven here by a stand-in for DeepSpeed's engine that writes and reads its files through a
`checkpoint_engine` exactly as DeepSpeed 0.19 does (torch.save / torch.load(weights_only=False) on paths in
the step directory), in one process without a process group, so each case runs in milliseconds; the real
engine's files are covered in test_resume.py. Also here: the run directory's lock, start-up on a full
disk, DeepSpeed's op build lock and the `deepspeed.checkpoint.*` keys."""
import errno
import json
import multiprocessing as mp
import os
import re
import signal
import time

import pytest
import torch

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.training import rng
from mot_parallel.training.checkpoint import CheckpointContents, CheckpointManager, TrainState
from mot_parallel.training.checkpoint_files import CheckpointError, read_manifest
from mot_parallel.training.resume import resolve_resume
from train_utils import TINY

MODEL, OPTIM = "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"


class TorchWriter:
    """DeepSpeed's TorchCheckpointEngine: what every DeepSpeed file goes through."""

    def save(self, state, path):
        torch.save(state, path)

    def load(self, path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)


class StandInEngine:
    def __init__(self, value=0.0):
        self.checkpoint_engine = TorchWriter()
        self.weight = torch.full((64,), value)
        self.loaded = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        self.checkpoint_engine.save({"module": self.weight, **client_state}, os.path.join(save_dir, tag, MODEL))
        self.checkpoint_engine.save({"exp_avg": self.weight * 2}, os.path.join(save_dir, tag, OPTIM))

    def load_checkpoint(self, load_dir, tag):
        state = self.checkpoint_engine.load(os.path.join(load_dir, tag, MODEL))
        self.checkpoint_engine.load(os.path.join(load_dir, tag, OPTIM))
        self.weight = state["module"]
        return os.path.join(load_dir, tag), state


def _cfg(run, *extra):
    return load_config(None, TINY + [f"run.output_dir={run}", *extra])


def _manager(run, keep_last=3, value=0.0):
    cfg = _cfg(run)
    state = TrainState()
    contents = CheckpointContents(StandInEngine(value), {"train": state}, rng.RNGStreams(torch.device("cpu")))
    manager = CheckpointManager(str(run / "checkpoints"), keep_last, 0, contents, validate(cfg, 1))
    return manager, state


def _save_steps(run, steps, keep_last=3):
    manager, state = _manager(run, keep_last)
    for step in steps:
        state.step = step
        manager.save(step)
    return manager


def _tags(run):
    return sorted(p for p in os.listdir(run / "checkpoints") if p.startswith("step_"))


def test_pruning_counts_only_complete_checkpoints_and_keeps_the_resumed_one(tmp_path):
    """keep_last=1 after falling back past a truncated newest checkpoint: the checkpoint resumed from and the
    newest save survive, the corrupt one is neither counted nor deleted, and `latest` names a checkpoint."""
    _save_steps(tmp_path, [4, 8])
    shard = tmp_path / "checkpoints" / "step_00000008" / OPTIM
    shard.write_bytes(shard.read_bytes()[:100])
    target = resolve_resume(_cfg(tmp_path, "checkpoint.on_corrupt=previous"), validate(_cfg(tmp_path), 1))
    assert target.tag == "step_00000004"
    manager, state = _manager(tmp_path, keep_last=1)
    manager.load(target.directory, target.tag)
    for step in (5, 6, 7):
        state.step = step
        manager.save(step)
    assert _tags(tmp_path) == ["step_00000004", "step_00000007", "step_00000008"]
    assert (tmp_path / "checkpoints" / (tmp_path / "checkpoints" / "latest").read_text()).is_dir()


def test_steps_beyond_99999999_are_seen_by_resume_and_pruning(tmp_path):
    _save_steps(tmp_path, [99_999_999, 100_000_000, 123_456_789], keep_last=2)
    assert _tags(tmp_path) == ["step_100000000", "step_123456789"]
    cfg = _cfg(tmp_path)
    assert resolve_resume(cfg, validate(cfg, 1)).step == 123_456_789


def test_latest_is_never_written_through_a_link(tmp_path):
    """A `latest.tmp` (or `latest`) that is a symbolic link to another file: that file stays untouched."""
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.tmp").symlink_to(outside)
    _save_steps(tmp_path, [4])
    (tmp_path / "checkpoints" / "latest").unlink()
    (tmp_path / "checkpoints" / "latest").symlink_to(outside)
    _save_steps(tmp_path, [8])
    assert outside.read_text() == "keep me"
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000008"


def test_the_manifest_hashes_every_file_the_engine_wrote(tmp_path):
    import hashlib
    _save_steps(tmp_path, [4])
    step = tmp_path / "checkpoints" / "step_00000004"
    files = read_manifest(str(step))["files"]
    assert sorted(files) == [MODEL, "rng_rank_0.pt", OPTIM]
    for rel, rec in files.items():
        assert rec == {"bytes": os.path.getsize(step / rel), "sha256": hashlib.sha256((step / rel).read_bytes())
                       .hexdigest(), "rank": 0}


def test_a_file_swapped_in_from_another_checkpoint_is_refused_by_its_hash(tmp_path):
    """Same name, same size, other content: refused before anything is loaded."""
    manager, state = _manager(tmp_path, value=1.0)
    for step in (4, 8):
        manager.engine.weight += 1
        state.step = step
        manager.save(step)
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step_00000008" / MODEL).write_bytes((ckpt / "step_00000004" / MODEL).read_bytes())
    fresh, _ = _manager(tmp_path)
    with pytest.raises(CheckpointError, match=f"{MODEL}: its content differs from the manifest's SHA-256"):
        fresh.load(str(ckpt), "step_00000008")
    assert fresh.engine.weight.sum() == 0  # nothing was loaded


def test_a_file_removed_with_its_manifest_entry_is_named_when_deepspeed_asks_for_it(tmp_path):
    _save_steps(tmp_path, [4])
    step = tmp_path / "checkpoints" / "step_00000004"
    (step / OPTIM).unlink()
    meta = read_manifest(str(step))
    del meta["files"][OPTIM]
    (step / "checkpoint.json").write_text(json.dumps(meta))
    manager, _ = _manager(tmp_path)
    with pytest.raises(CheckpointError, match=f"{OPTIM}: DeepSpeed needs this file, but the checkpoint's manifest "
                                              "does not list it"):
        manager.load(str(tmp_path / "checkpoints"), "step_00000004")


# ----------------------------------------------------------------------------------------- the run directory
def _hold_run_dir(run, ready):
    from mot_parallel.training.run_dir import claim_run_dir
    claim_run_dir(_cfg(run), 0)
    ready.set()
    time.sleep(600)


def test_a_second_run_in_the_same_directory_is_refused_until_the_first_dies(tmp_path):
    from mot_parallel.preflight import preflight
    cfg = _cfg(tmp_path, "data.demo_documents=40")
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    first = ctx.Process(target=_hold_run_dir, args=(tmp_path, ready))
    first.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ConfigError, match=re.escape(f"{tmp_path} is in use by another run (pid {first.pid} on ")):
            preflight(cfg, validate(cfg, 1))
    finally:
        os.kill(first.pid, signal.SIGKILL)  # the OS releases the lock of a killed run
        first.join()
    preflight(cfg, validate(cfg, 1))


def test_start_up_on_a_full_disk_removes_its_own_staging_first_and_names_enospc(tmp_path, monkeypatch):
    """The disk is full only because of the run's unpublished staging leftovers: start-up frees them before it
    probes the disk. A disk full for other reasons is named: ENOSPC, the path and the free space."""
    import builtins

    from mot_parallel.preflight import preflight
    real_open = builtins.open
    ckpt = tmp_path / "checkpoints"
    leftover = ckpt / ".staging" / "step_00000012"
    leftover.mkdir(parents=True)
    (leftover / "half_written.pt").write_bytes(b"\0" * 1000)
    full = {"always": False}

    def open_on_full_disk(path, mode="r", *a, **k):
        if "w" in mode and str(path).startswith(str(ckpt)) and (full["always"] or (ckpt / ".staging").exists()):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", open_on_full_disk)
    cfg = _cfg(tmp_path, "data.demo_documents=40")
    preflight(cfg, validate(cfg, 1))
    assert not (ckpt / ".staging").exists()
    full["always"] = True
    with pytest.raises(ConfigError, match=re.escape(f"checkpoint.dir {ckpt}: the disk is full (ENOSPC, ")):
        preflight(cfg, validate(cfg, 1))


# ----------------------------------------------------------------------------------------- DeepSpeed's op builds
def test_an_op_build_lock_left_by_a_dead_build_is_refused_with_the_file_to_remove(tmp_path):
    from mot_parallel.distributed.op_build_lock import StaleBuildLock, check_op_build_locks
    lock = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    with pytest.raises(StaleBuildLock, match=f"no process on this host is building.*rm {lock}"):
        check_op_build_locks(str(tmp_path), poll_s=0.01)


def test_a_live_or_finishing_op_build_is_waited_for(tmp_path):
    """An old lock with a builder working in its directory on this host is waited on; a young one that no
    process here builds (a build on another host sharing the directory) is waited on until it goes."""
    import subprocess
    import threading

    from mot_parallel.distributed.op_build_lock import check_op_build_locks
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    os.utime(lock, (time.time() - 3600, time.time() - 3600))
    ninja = subprocess.Popen(["sleep", "30"], cwd=lock.parent)  # as torch runs ninja in the build directory
    threading.Timer(0.5, lambda: (os.remove(lock), ninja.kill())).start()
    check_op_build_locks(str(tmp_path), stale_after_s=60, poll_s=0.01)
    ninja.wait()
    lock.touch()
    threading.Timer(0.5, lambda: os.remove(lock)).start()
    check_op_build_locks(str(tmp_path), stale_after_s=60, poll_s=0.01)


# ----------------------------------------------------------------------------------------- deepspeed.checkpoint.*
@pytest.mark.parametrize("value, refused", [
    ("{load_universal: true}", "deepspeed.checkpoint.load_universal=True is not supported"),
    ("{use_node_local_storage: true}", "deepspeed.checkpoint.use_node_local_storage=True is not supported"),
    ("{checkpoint_serialization: false}", "deepspeed.checkpoint.checkpoint_serialization=False is not supported"),
    ("{writer: {type: fast, decoupled: true}}", "deepspeed.checkpoint.writer: DeepSpeed's fast and decoupled"),
    ("{tag_validation: Maybe}", "deepspeed.checkpoint.tag_validation='Maybe': one of Ignore, Warn, Fail"),
    ("{parallel_write: {pipeline_stage: 1}}", "deepspeed.checkpoint.parallel_write=.*only"),
    ("{load_universl: false}", "deepspeed.checkpoint.load_universl: not a DeepSpeed checkpoint key"),
    ("[1]", "deepspeed.checkpoint must be a mapping"),
])
def test_deepspeed_checkpoint_keys_that_break_the_checkpoint_contract_are_refused(value, refused):
    with pytest.raises(ConfigError, match=refused):
        validate(load_config(None, TINY + [f"deepspeed={{checkpoint: {value}}}"]), 1)


def test_safe_deepspeed_checkpoint_keys_pass():
    validate(load_config(None, TINY + ["deepspeed={checkpoint: {tag_validation: fail, load_universal: false, "
                                       "parallel_write: {pipeline_stage: true}, checkpoint_serialization: true}}"]), 1)
    with pytest.raises(ConfigError, match="deepspeed.datastates_ckpt: an asynchronous checkpoint engine"):
        validate(load_config(None, TINY + ["deepspeed={datastates_ckpt: {}}"]), 1)


def test_every_model_setting_is_compared_on_resume_or_says_why_not():
    import dataclasses

    from mot_parallel.model.settings import ModelSettings
    from mot_parallel.training.model_record import NOT_RECORDED, RECORDED, SHARD_SHAPED
    assert {f.name for f in dataclasses.fields(ModelSettings)} == set(RECORDED) | set(SHARD_SHAPED) | set(NOT_RECORDED)


def test_a_checkpoint_from_before_a_continuous_setting_existed_still_fits_its_default():
    """A Transfusion checkpoint recorded before `position_embedding` existed resumes into a model that leaves it
    at its default, and is refused, by key, by one that sets it."""
    from mot_parallel.training.model_record import model_differences, model_record
    image = "{image: {source: pixels, channels: 3, patch: 8, grid: [4, 4], boi_token: 256, eoi_token: 257"
    tf = TINY + ["model.vocab_size=320", "model.modalities=[text,image]"]
    now = model_record(load_config(None, tf + [f"model.continuous={image}}}}}"]))
    old = dict(now, continuous=[{k: v for k, v in c.items() if k != "position_embedding"} for c in now["continuous"]])
    del old["diffusion_prediction"]
    assert model_differences(old, now, deepspeed=True) == []
    placed = model_record(load_config(None, tf + [f"model.continuous={image}, position_embedding: sincos2d}}}}",
                                                  "diffusion.prediction=v"]))
    diffs = model_differences(old, placed, deepspeed=True)
    assert len(diffs) == 1 and diffs[0].startswith("model.continuous") and "sincos2d" in diffs[0]
    assert model_differences(now, placed, deepspeed=True)[-1].startswith("diffusion.prediction: the checkpoint has "
                                                                         "epsilon, this run v")


def test_the_hash_cost_benchmark_reports_every_config(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench", os.path.join(os.path.dirname(__file__), "..", "..", "tools",
                                                                        "bench_checkpoint_hash.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--sample-mib", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert len(out["rows"]) == 3 and out["rates"]["sha256_Bps"] > 0
    for row in out["rows"]:  # DP rank 0 writes a whole model-states file; a resume share is at most that
        assert 0 < row["resume_share_GB"] <= row["written_by_one_rank_GB"] < row["checkpoint_GB"]
