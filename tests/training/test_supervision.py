"""Processes under launchers (mot_parallel/training/supervision.py, distributed/startup.py):
- the launcher watcher: a worker whose launcher (its parent) or, under the deepspeed launcher, the
  runner above that (its grandparent) dies notices within a few polls and stops as on SIGTERM; nothing is
  watched for a plain process; /proc parsing survives command names with spaces and parentheses;
- the collective timeout: `parallel.collective_timeout_s` is validated, bounds a wait in the world group
  AND in groups created later (torch would give those 30 minutes), and a SIGSTOPped rank makes the other
  rank of a real 2-process training exit within the timeout with an error naming the key.
The end-to-end test of SIGTERM to the real `deepspeed` launcher is in test_launchers.py."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.testing import free_port
from mot_parallel.training import supervision
from train_utils import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPERVISION = os.path.join(ROOT, "mot_parallel", "training", "supervision.py")

# A worker that loads the watcher by file (no torch: starts in ~0.1 s) and reports what it saw.
_WORKER = textwrap.dedent("""
    import importlib.util, os, sys, time
    spec = importlib.util.spec_from_file_location("supervision", sys.argv[1])
    sup = sys.modules["supervision"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sup)
    out = sys.argv[2]
    def gone(why):
        with open(out + ".gone", "w") as f:
            f.write(why)
        os._exit(0)
    sup.watch_launcher(sys.argv[3], on_gone=gone, interval_s=0.1)
    with open(out + ".tmp", "w") as f:
        f.write(f"{os.getppid()} {sup.parent_of(os.getppid())}")
    os.replace(out + ".tmp", out + ".ready")
    time.sleep(60)
""")


def _wait_for(path, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, "the process chain ended early (see stderr)"
        time.sleep(0.05)
    assert os.path.exists(path), f"{path} did not appear within {timeout} s"
    return open(path).read()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def chain(tmp_path):
    """runner (sh) -> launcher (sh) -> worker: the shape of `deepspeed` -> launch.py -> training process.
    The trailing `; :` keeps each shell alive as its child's parent instead of exec'ing it."""
    out, script = str(tmp_path / "w"), tmp_path / "worker.py"
    script.write_text(_WORKER)
    stay = ["sh", "-c", '"$@"; :', "sh"]  # run the arguments as a child (never re-parsed), then return
    runner = subprocess.Popen(stay + stay + [sys.executable, str(script), SUPERVISION, out, "deepspeed"],
                              start_new_session=True)
    launcher, runner_seen = map(int, _wait_for(out + ".ready", 30, runner).split())
    assert runner_seen == runner.pid
    yield runner, launcher, out
    os.killpg(runner.pid, signal.SIGKILL)  # the whole group, whoever is left (the group is ours alone)
    runner.wait()


def test_worker_notices_the_runner_above_its_launcher_is_gone(chain):
    runner, launcher, out = chain
    runner.send_signal(signal.SIGTERM)  # as `kill <deepspeed pid>`: the launcher itself survives
    runner.wait()
    why = _wait_for(out + ".gone", 5)
    assert f"the launcher that started its launcher process (pid {runner.pid}) is gone" == why
    assert _alive(launcher)  # it was the grandparent's death that was seen, not the parent's


def test_worker_notices_its_launcher_is_gone(chain):
    runner, launcher, out = chain
    os.kill(launcher, signal.SIGKILL)
    assert _wait_for(out + ".gone", 5) == f"its launcher process (pid {launcher}) is gone"


def test_unsupervised_processes_are_not_watched():
    for launcher in ("none", "env"):
        assert supervision.lineage_for(launcher) is None
        assert supervision.watch_launcher(launcher, on_gone=lambda why: None) is None
    lineage = supervision.lineage_for("torchrun")
    assert lineage == supervision.Lineage(os.getppid(), None) and lineage.lost() is None
    assert supervision.lineage_for("deepspeed").grandparent == supervision.parent_of(os.getppid())


def test_parent_of_reads_names_with_spaces_and_parentheses(tmp_path):
    odd = tmp_path / "x) (y z"  # the kernel's comm field is the executable's name, in parentheses
    shutil.copy(shutil.which("sleep"), odd)
    child = subprocess.Popen([str(odd), "30"])
    try:
        assert supervision.parent_of(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()
    assert supervision.parent_of(os.getpid()) == os.getppid()
    assert supervision.parent_of(child.pid) is None  # gone (reaped)


def test_default_reaction_is_sigterm_to_ourselves():
    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        supervision.stop_as_on_sigterm("test")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [signal.SIGTERM]


@pytest.mark.parametrize("value", ["0", "-5", ".nan", ".inf"])
def test_collective_timeout_is_validated(value):
    cfg = load_config(None, [f"parallel.collective_timeout_s={value}"])
    # the generic non-finite check (any float key) answers first for nan/inf; both name the key
    bad = r"parallel.collective_timeout_s=\S+ (must be a positive, finite|is not a finite) number"
    with pytest.raises(ConfigError, match=bad):
        validate(cfg)
    validate(load_config(None, ["parallel.collective_timeout_s=2.5"]))


def _env(rank, port):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "MOT_FAULT")}
    env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return env


_PROBE = textwrap.dedent("""
    import os, signal, sys, time, torch, torch.distributed as dist
    from mot_parallel.distributed import init_distributed
    from mot_parallel.training.supervision import is_collective_timeout
    ctx = init_distributed(force_cpu=True, timeout_s=3)
    group = dist.new_group([0, 1])  # created after init, as our topology's and DeepSpeed's groups are
    x = torch.ones(1)
    dist.all_reduce(x, group=group)
    if ctx.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    t = time.monotonic()
    try:
        dist.all_reduce(x, group=group)
    except RuntimeError as e:
        print(f"failed after {time.monotonic() - t:.1f} s, timeout={is_collective_timeout(e)}", flush=True)
        os._exit(3)
""")


def test_timeout_bounds_groups_created_after_init():
    """A 3 s timeout: rank 0's all-reduce in a later group fails after 3-10 s (torch's default: 30 min)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE], env=_env(r, port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        out, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 3, out + err[-3000:]
    seconds = float(out.split("failed after ")[1].split()[0])
    assert 2.5 <= seconds <= 10 and "timeout=True" in out, out


def test_stopped_rank_fails_the_training_within_the_timeout(tmp_path):
    """Two `launch/pretrain.py` ranks, parallel.collective_timeout_s=10; rank 1 is SIGSTOPped once step 2
    is logged. Rank 0 exits non-zero within 10 s + 30 s slack (default: blocks 30 minutes), its last line
    naming the key, the timeout and the cause."""
    port, run_dir = free_port(), tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "launch", "pretrain.py"), "--config",
            os.path.join(ROOT, "configs", "demo_cpu.yaml"), *TINY, "train.steps=1000", f"run.output_dir={run_dir}",
            "parallel.collective_timeout_s=10"]
    logs = [open(tmp_path / f"rank{r}.log", "w+") for r in (0, 1)]
    procs = [subprocess.Popen(args, env=_env(r, port), stdout=logs[r], stderr=subprocess.STDOUT, cwd=ROOT)
             for r in (0, 1)]
    try:
        deadline = time.monotonic() + 300
        while "step 2/1000" not in (tmp_path / "rank0.log").read_text() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (tmp_path / "rank0.log").read_text()[-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        rc = procs[0].wait(timeout=40)
        elapsed = time.monotonic() - stopped
    finally:
        for p in procs:
            p.kill()
            p.wait()
    log = (tmp_path / "rank0.log").read_text()
    assert rc != 0 and elapsed < 40, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith("error: rank 0: a collective or the start-up rendezvous did not complete within "
                           "parallel.collective_timeout_s=10 s"), \
        log[-3000:]
    assert "Another rank is stopped, deadlocked, dead or far slower" in last
