"""Checkpoints and resume lose nothing, replace nothing silently and execute nothing.

One short run (1 process, checkpoints at steps 4 and 8) is copied into each test, which then damages it
the way a crash, a full disk or a hostile file would. Resume decisions are made before any process group
(training/resume.py), so most checks call them directly; the rest train on gloo processes."""
import hashlib
import json
import os
import shutil

import pytest
import torch

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.testing import DistributedTestError, run_distributed
from mot_parallel.training.checkpoint_files import CheckpointError, read_manifest, unsafe_pickles
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
    optim = _step_file(run, "step_00000008", "optim_states")
    optim.unlink()  # gone, and the manifest edited to match: complete, yet not readable by the reshard
    meta = read_manifest(target.path)
    del meta["files"][optim.name]
    (run / "checkpoints" / "step_00000008" / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot reshard it: 1 of its DeepSpeed files are missing, e.g. zero_pp"):
        resolve_resume(cfg, validate(cfg, 2 if "tensor" in change else 1))
    meta["layout"]["zero_stage"] = 0  # fp32 without ZeRO: torch's own optimizer state, no ZeRO files
    (run / "checkpoints" / "step_00000008" / "checkpoint.json").write_text(json.dumps(meta))
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
    manifest["files"][shard.name].update(bytes=os.path.getsize(shard), sha256=hashlib.sha256(shard.read_bytes())
                                         .hexdigest())
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
    with pytest.raises(DistributedTestError, match=r"writing checkpoint .*step_00000004 failed: the disk is full "
                                                   r"\(ENOSPC, .* GiB free\)"):
        run_distributed(_disk_full_body, 1, args=(str(tmp_path / "run"),), timeout=300)
    assert not (tmp_path / "run" / "checkpoints" / "step_00000004").exists()


def test_bad_resume_values_are_refused_before_training(run):
    with pytest.raises(ConfigError, match="checkpoint.on_corrupt"):
        _cfg(run, "checkpoint.on_corrupt=maybe")
    assert losses(run)[8]["loss"] > 0  # the copied run itself is intact


def _rewrite_manifest(step, change):
    meta = read_manifest(str(step))
    change(meta)
    (step / "checkpoint.json").write_text(json.dumps(meta))


def _crafted_pickle(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": _Exploit()}, path)


def _damage(run, how):
    """Damage step 8 the way a hostile or careless hand would; returns the name the refusal must give."""
    step = run / "checkpoints" / "step_00000008"
    if how == "symlinked directory":  # DeepSpeed's universal loader would unpickle what it finds in zero/
        _crafted_pickle(run / "elsewhere" / "optimizer_state.pt")
        (step / "zero").symlink_to(run / "elsewhere")
        return "zero: a symbolic link"
    if how == "symlinked rng file":
        (step / "rng_rank_0.pt").unlink()
        (step / "rng_rank_0.pt").symlink_to(run / "checkpoints" / "step_00000004" / "rng_rank_0.pt")
        return "rng_rank_0.pt: a symbolic link"
    if how == "stranger":
        (step / "notes.txt").write_text("hello")
        return "notes.txt: not listed in the manifest"
    if how == "entry removed with its file":
        (step / "rng_rank_0.pt").unlink()
        _rewrite_manifest(step, lambda m: m["files"].pop("rng_rank_0.pt"))
        return "rng_rank_0.pt: not in the manifest, but every rank of its layout writes one"
    if how == "entry outside":
        _rewrite_manifest(step, lambda m: m["files"].update({"../step_00000004/rng_rank_0.pt": {"bytes": 1}}))
        return "entry '../step_00000004/rng_rank_0.pt' is not a path inside the checkpoint"
    if how == "symlinked step directory":
        shutil.move(step, run / "moved")
        step.symlink_to(run / "moved")
        return "step_00000008: not a directory"
    raise ValueError(how)


@pytest.mark.parametrize("how", ["symlinked directory", "symlinked rng file", "stranger", "entry removed with its file",
                                 "entry outside", "symlinked step directory"])
def test_a_checkpoint_is_exactly_the_regular_files_its_manifest_lists(run, how):
    """Links are never followed, strangers and missing entries are named, before any process group."""
    name = _damage(run, how)
    with pytest.raises(CheckpointError, match=f"(?s)not complete.*{name}"):
        _resume(run)


def test_every_listed_file_is_scanned_whatever_its_name_or_directory(run):
    step = run / "checkpoints" / "step_00000008"
    for rel in ("zero/layers.0.weight/fp32.pt", "ds_state.bin"):
        _crafted_pickle(step / rel)
    _rewrite_manifest(step, lambda m: m["files"].update(
        {rel: {"bytes": os.path.getsize(step / rel), "sha256": "", "rank": 0} for rel in
         ("zero/layers.0.weight/fp32.pt", "ds_state.bin")}))
    found = unsafe_pickles(str(step))
    assert any("fp32.pt: posix.system" in f or "fp32.pt: os.system" in f for f in found)
    assert any("ds_state.bin: posix.system" in f or "ds_state.bin: os.system" in f for f in found)


def test_the_manifest_records_each_files_hash_and_writer_and_the_model(run):
    """DeepSpeed's own files go through its checkpoint engine, so the rank that wrote each one hashed it."""
    from mot_parallel.training.model_record import model_record
    step = run / "checkpoints" / "step_00000008"
    meta = read_manifest(str(step))
    assert len(meta["files"]) == 3
    for rel, rec in meta["files"].items():
        assert rec == {"bytes": os.path.getsize(step / rel), "sha256": hashlib.sha256((step / rel).read_bytes())
                       .hexdigest(), "rank": 0}, rel
    assert meta["model"] == model_record(_cfg(run))


@pytest.mark.parametrize("change, named", [
    ("model.num_layers=1", "model.num_layers: the checkpoint has 2, this run 1"),
    ("model.modalities=[image,text,speech]", "model.modalities: the checkpoint has \\['text', 'image', 'speech'\\]"),
    ("model.norm_placement=post", "model.norm_placement"),
    ("model.make_vocab_size_divisible_by=128", "model.make_vocab_size_divisible_by"),
])
def test_resuming_into_another_model_is_refused_naming_the_setting(run, change, named):
    with pytest.raises(CheckpointError, match=f"(?s)written for another model.*{named}"):
        _resume(run, change)
    assert _resume(run, "model.max_seq_len=32").tag == "step_00000008"  # a training setting may change


def test_a_universal_checkpoint_resumes_only_into_its_model_and_from_inside_itself(tmp_path):
    from mot_parallel.convert.universal import write_universal
    universal = tmp_path / "universal"
    write_universal(str(universal), _cfg(tmp_path), [], {"step": 8, "has_optimizer": False}, {"step": 8})
    with pytest.raises(CheckpointError, match="model.num_layers: the checkpoint has 2, this run 1"):
        _resume(tmp_path / "run", f"checkpoint.resume={universal}", "model.num_layers=1")
    assert _resume(tmp_path / "run", f"checkpoint.resume={universal}").universal
    (tmp_path / "outside.safetensors").write_bytes(b"")
    index = (universal / "index.json").read_text()
    (universal / "index.json").write_text(json.dumps({"embedding.word_embeddings.weight": "../outside.safetensors"}))
    with pytest.raises(CheckpointError, match="index.json: tensor 'embedding.word_embeddings.weight' is in "
                                              "'../outside.safetensors', not a file of the checkpoint"):
        _resume(tmp_path / "run", f"checkpoint.resume={universal}")
    (universal / "index.json").write_text(index)
    (universal / "model-00000.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(CheckpointError, match="model-00000.safetensors: a symbolic link"):
        _resume(tmp_path / "run", f"checkpoint.resume={universal}")


@pytest.mark.parametrize("damage, named", [
    ("index_outside", "is in '../outside.safetensors', not a file of the checkpoint"),
    ("index_absolute", "not a file of the checkpoint"),
    ("shard_link", "model-00000.safetensors: a symbolic link"),
    ("meta_link", "state.json: a symbolic link"),
    ("stranger", "optim-00009.safetensors: not listed by the universal checkpoint"),
    ("index_list", "index.json: expected a JSON dict"),
])
def test_every_reader_of_a_universal_checkpoint_opens_only_its_listed_regular_files(tmp_path, damage, named):
    """Universal (read by export, to-hf, to-megatron, sample.py and resume) is a closed set of regular files:
    the metadata files and the shards index.json names, inside the directory; links, names outside it and
    unlisted files are refused before any tensor is read."""
    from mot_parallel.convert.export import export_universal
    from mot_parallel.convert.universal import Universal, write_universal
    universal = tmp_path / "universal"
    write_universal(str(universal), _cfg(tmp_path), [("w", torch.ones(2))], {"step": 8, "has_optimizer": False},
                    {"step": 8})
    assert Universal(str(universal)).get("w").tolist() == [1.0, 1.0]
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((universal / "model-00000.safetensors").read_bytes())
    index = universal / "index.json"
    if damage == "index_outside":
        index.write_text(json.dumps({"w": "../outside.safetensors"}))
    elif damage == "index_absolute":
        index.write_text(json.dumps({"w": str(outside)}))
    elif damage == "shard_link":
        (universal / "model-00000.safetensors").unlink()
        (universal / "model-00000.safetensors").symlink_to(outside)
    elif damage == "meta_link":
        (tmp_path / "state.json").write_text((universal / "state.json").read_text())
        (universal / "state.json").unlink()
        (universal / "state.json").symlink_to(tmp_path / "state.json")
    elif damage == "stranger":
        (universal / "optim-00009.safetensors").write_bytes(outside.read_bytes())
    elif damage == "index_list":
        index.write_text("[]")
    with pytest.raises(CheckpointError, match=named):
        Universal(str(universal))
    with pytest.raises(CheckpointError, match=named):
        export_universal(str(universal), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists() and not (tmp_path / "export.writing").exists()


def test_a_checkpoint_of_an_earlier_release_resumes_with_a_warning(run, capsys):
    """Format 1 (sizes only): accepted, saying what cannot be checked (its hashes and model settings)."""
    step = run / "checkpoints" / "step_00000008"
    _rewrite_manifest(step, lambda m: (m.update(format="mot_parallel.checkpoint/1", files={
        rel: rec["bytes"] for rel, rec in m["files"].items()}), m.pop("model")))
    assert _resume(run, "model.num_layers=2").tag == "step_00000008"
    assert "format-1 manifest" in capsys.readouterr().err


def test_a_swapped_file_stops_the_real_resume(run):
    """End to end on DeepSpeed's files: step 4's model states copied over step 8's (same size) are refused."""
    step8, step4 = (run / "checkpoints" / t for t in ("step_00000008", "step_00000004"))
    shard = _step_file(run, "step_00000008", "model_states")
    shutil.copy(step4 / shard.name, shard)
    _rewrite_manifest(step8, lambda m: m["files"][shard.name].update(bytes=os.path.getsize(shard)))
    with pytest.raises(DistributedTestError, match="its content differs from the manifest's SHA-256"):
        run_distributed(train_body, 1, args=([f"run.output_dir={run}", "checkpoint.interval=4"],), timeout=300)


def test_the_planners_checkpoint_sizes_are_deepspeeds(run):
    """The sizes the hash cost is quoted for (tools/bench_checkpoint_hash.py) are the files DeepSpeed writes."""
    from mot_parallel.model import ModelSettings
    from mot_parallel.studies.benchmarks.checkpoint_sizes import checkpoint_files
    cfg = _cfg(run)
    files = checkpoint_files(ModelSettings.from_config(cfg), validate(cfg, 1), 4)
    for planned, pattern in ((files.model_file, "model_states"), (files.optimizer_file, "optim_states")):
        actual = os.path.getsize(_step_file(run, "step_00000008", pattern))
        assert planned <= actual <= planned * 1.02 + 64 * 1024, (pattern, planned, actual)
