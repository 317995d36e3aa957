"""Slurm: the project's own sbatch script, submitted through launch/submit.py to a real single-host Slurm
cluster on loopback (slow: installs Slurm when missing, starts its daemons, runs real jobs):
- srun mode (one task per process) and deepspeed mode (one task per node) train 2-task CPU jobs to
  completion and write metrics;
- preemption: the time-limit warning (USR1 to the batch shell) makes the training checkpoint and stop,
  the job requeues itself, resumes from the checkpoint, and its losses equal an uninterrupted run's.
The pdsh mode needs ssh between nodes and is not run here. The faked-environment checks of rank
discovery under srun are in test_launch_env.py; submit.py's snapshot is checked without Slurm below."""
import json
import os
import subprocess
import sys
import time

import pytest

from slurm_cluster import LocalSlurm, ensure_slurm_installed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBMIT = [sys.executable, os.path.join(ROOT, "launch", "submit.py"), "--config",
          os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--gpus-per-node", "0", "--procs-per-node", "2",
          "--time", "00:15:00", "--python", sys.executable]  # this interpreter, wherever the repository's .venv is


def _metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r.get("kind", "train") == "train"}


def test_submit_snapshots_the_run(tmp_path):
    out = subprocess.run(SUBMIT + ["--no-submit", "--mode", "deepspeed", f"run.output_dir={tmp_path}", "train.steps=7"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    snap = tmp_path / "submit"
    script = (snap / "submit.sh").read_text()
    assert "MOT_LAUNCH=deepspeed" in script and str(snap / "config.yaml") in script and "--nodes=1" in script
    assert "--ntasks-per-node=1" in script and "--cpus-per-task=2" in script and "MOT_GPUS_PER_NODE=2" in script
    assert subprocess.run(["bash", "-n", str(snap / "submit.sh")]).returncode == 0
    assert subprocess.run(["bash", "-n", os.path.join(ROOT, "launch", "slurm", "pretrain.sbatch")]).returncode == 0
    assert "train:\n" in (snap / "config.yaml").read_text() and "steps: 7" in (snap / "config.yaml").read_text()
    rev = (snap / "revision.txt").read_text().split("\n")[0]
    assert len(rev) == 40 or rev == "not a git checkout"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = ensure_slurm_installed()
    if why:
        pytest.skip(why)
    cluster = LocalSlurm(str(tmp_path_factory.mktemp("slurm"))).start()
    yield cluster
    cluster.stop()


def _submit(slurm, run, *extra, mode="srun"):
    out = subprocess.run(SUBMIT + ["--mode", mode, f"run.output_dir={run}", *extra], capture_output=True,
                         text=True, timeout=120, env=slurm.env)
    assert out.returncode == 0 and "Submitted batch job" in out.stdout, out.stdout + out.stderr
    return out.stdout.split()[-1]


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["srun", "deepspeed"])
def test_sbatch_trains_to_completion(slurm, tmp_path, mode):
    run = str(tmp_path / mode)
    job = _submit(slurm, run, "train.steps=6", "logging.interval=2", mode=mode)
    _wait(lambda: os.path.exists(os.path.join(run, "COMPLETED")) and not slurm.squeue(job), 300, f"job {job}")
    log = open(os.path.join(run, f"slurm-{job}.out")).read()
    assert "[mot] training completed" in log, log[-3000:]
    assert sorted(_metrics(run)) == [2, 4, 6]


@pytest.mark.slow
def test_preemption_checkpoints_requeues_and_resumes(slurm, tmp_path):
    steps = ["train.steps=40", "logging.interval=1", "checkpoint.interval=0"]
    ref = str(tmp_path / "ref")
    job = _submit(slurm, ref, *steps)
    _wait(lambda: os.path.exists(os.path.join(ref, "COMPLETED")) and not slurm.squeue(job), 300, "the reference")
    run = str(tmp_path / "preempted")
    job = _submit(slurm, run, *steps)
    _wait(lambda: os.path.exists(os.path.join(run, "metrics.jsonl")) and len(_metrics(run)) >= 10, 300, "step 10")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm.env, check=True)  # the time-limit warning
    _wait(lambda: os.path.exists(os.path.join(run, "COMPLETED")) and not slurm.squeue(job), 400, "the requeued job")
    log = open(os.path.join(run, f"slurm-{job}.out")).read()
    assert "SIGTERM: checkpointing at step" in log and "requeueing job" in log, log[-3000:]
    assert "(restart 1)" in log and "resumed from" in log
    saved = int(log.split("SIGTERM: checkpointing at step ")[1].split()[0])
    assert 10 <= saved < 40
    got, want = _metrics(run), _metrics(ref)
    assert sorted(got) == list(range(1, 41))
    for step in range(saved + 1, 41):  # steps after the resume reproduce the uninterrupted run
        assert got[step]["loss"] == want[step]["loss"], step
