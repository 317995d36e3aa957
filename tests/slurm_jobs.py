"""Jobs on the test Slurm clusters (slurm_cluster.py): submit through launch/submit.py, wait, read metrics."""
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")


def submit(cluster, run, nodes, procs, *overrides, mode="srun", config=DEMO):
    """launch/submit.py on the cluster; the job id."""
    cmd = [sys.executable, os.path.join(ROOT, "launch", "submit.py"), "--config", config, "--nodes", str(nodes),
           "--gpus-per-node", "0", "--procs-per-node", str(procs), "--time", "00:30:00", "--mode", mode,
           "--python", sys.executable, f"run.output_dir={run}", *overrides]
    out = cluster.run(cmd)
    assert out.returncode == 0 and "Submitted batch job" in out.stdout, out.stdout + out.stderr
    return out.stdout.split()[-1]


def wait(predicate, timeout, what, run=None):
    """Poll `predicate` each second; on timeout fail with the tails of the run's job logs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    logs = "".join(open(os.path.join(run, f)).read()[-3000:] for f in os.listdir(run) if f.startswith("slurm-")) \
        if run and os.path.isdir(run) else ""
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def finished(cluster, run, job, timeout=900) -> str:
    """Wait for the run's COMPLETED mark and the job's end; the job's log."""
    wait(lambda: os.path.exists(os.path.join(run, "COMPLETED")) and not cluster.squeue(job), timeout, f"job {job}",
         run=run)
    return open(os.path.join(run, f"slurm-{job}.out")).read()


def records(run, kind="train"):
    """{step: metrics record} of the run's training (or "valid") records."""
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r.get("kind", "train") == kind}


def loss_keys(record):
    """The total and per-modality losses of a training or validation record."""
    return [k for k in record if k in ("loss", "valid/loss") or k.startswith(("loss/", "valid/loss/"))]
