"""launch/slurm/pretrain.sbatch passes the user's arguments through literally, in every launch mode,
without Slurm: srun, scontrol and scancel are stubs on PATH, and MOT_PYTHON points at a stub interpreter
directory whose `python` runs the real one (config resolution) but only records `launch/pretrain.py`
runs, and whose `deepspeed` records its arguments. The stub srun starts its command once per node with
that node's SLURM_NODEID, as srun would. Hostile input: an override holding `$(touch ...)`, one with a
space (`{image: 0.5}`), and a repository path holding a quote and Python code. Nothing may execute them,
the overrides must arrive as single arguments, and in pdsh mode (whose DeepSpeed runner re-parses its
command on the remote shell) they must not travel on the command line at all."""
import json
import os
import subprocess
import sys

import pytest

from mot_parallel.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SBATCH = os.path.join(ROOT, "launch", "slurm", "pretrain.sbatch")
CONFIG = "configs/demo_cpu.yaml"

_HEAD = "#!{python}\nimport json, os, sys\n"
_WRITE = """with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                        "node": os.environ.get("SLURM_NODEID")}}) + "\\n")
"""
_RECORD = _HEAD + _WRITE  # a stub that appends its name, arguments and node to $RECORD
STUBS = {
    "srun": _RECORD + """import subprocess
first = next(i for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("-"))
opts, cmd = sys.argv[1:first], sys.argv[first:]  # the stub takes --opt=value forms only, as the script does
ntasks = int(dict(o.split("=", 1) for o in opts if "=" in o).get("--ntasks", "1"))
rcs = [subprocess.run(cmd, env=dict(os.environ, SLURM_NODEID=str(n), SLURM_PROCID=str(n))).returncode
       for n in range(ntasks)]
sys.exit(max(rcs))
""",
    "scontrol": _RECORD + """if sys.argv[1:3] == ["show", "hostnames"]:
    try:
        print("node1\\nnode2", flush=True)
    except BrokenPipeError:  # `| head -n 1` stopped reading
        pass
""",
    "scancel": _RECORD,
    "deepspeed": _RECORD,
    "python": _HEAD + """if sys.argv[1:2] != ["launch/pretrain.py"]:  # config resolution: the real interpreter
    os.execv({python!r}, [{python!r}] + sys.argv[1:])
""" + _WRITE,
}


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the script must find mot_parallel from $MOT_REPO itself
    bin_dir, py_dir = tmp_path / "bin", tmp_path / "py"
    for d in (bin_dir, py_dir):
        d.mkdir()
    for name, text in STUBS.items():
        path = (py_dir if name in ("python", "deepspeed") else bin_dir) / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(0o755)
    # the repository as a path that breaks out of a quoted Python string (no '/' allowed in a name)
    repo = tmp_path / """repo'+str(__import__("os").system("touch $RECORD.pwned_by_repo"))+'"""
    repo.symlink_to(ROOT)
    return bin_dir, py_dir, repo


def _hostile(tmp_path):
    """Command substitution both ways (the later run.name wins; absolute targets, whatever the working
    directory), and a value with a space."""
    return [f"run.name=$(touch {tmp_path}/pwned_by_arg)", "train.optimizer.modality_lr_scale={image: 0.5}",
            f"run.name=`touch {tmp_path}/pwned_by_backquotes`"]


def _nothing_ran(tmp_path):
    return not any(p.name.startswith(("pwned_by", "record.jsonl.pwned")) for p in tmp_path.rglob("*"))


def _sbatch(tmp_path, stubs, mode, repo=None):
    bin_dir, py_dir, hostile_repo = stubs
    repo = repo or hostile_repo
    run_dir = tmp_path / "run"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(tmp_path / "record.jsonl"),
               MOT_LAUNCH=mode, MOT_REPO=str(repo), MOT_PYTHON=str(py_dir / "python"), MOT_GPUS_PER_NODE="2",
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_NUM_NODES="2")
    args = [f"run.output_dir={run_dir}", *_hostile(tmp_path)]
    out = subprocess.run(["bash", SBATCH, CONFIG, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    records = [json.loads(line) for line in open(tmp_path / "record.jsonl")] if out.returncode == 0 else []
    assert _nothing_ran(tmp_path), f"a user argument or the repository path was executed: {os.listdir(tmp_path)}"
    assert out.returncode == 0, out.stdout + out.stderr
    return records, args, run_dir


def test_srun_mode_passes_arguments_literally(tmp_path, stubs):
    records, args, _ = _sbatch(tmp_path, stubs, "srun")
    (train,) = [r for r in records if r["prog"] == "python"]
    assert train["argv"] == ["launch/pretrain.py", "--config", CONFIG, *args]


def test_deepspeed_mode_passes_arguments_literally_with_each_nodes_rank(tmp_path, stubs):
    records, args, _ = _sbatch(tmp_path, stubs, "deepspeed")
    launches = [r for r in records if r["prog"] == "deepspeed"]
    assert [r["node"] for r in launches] == ["0", "1"]
    for node, r in enumerate(launches):
        argv = r["argv"]
        assert argv[argv.index("--node_rank") + 1] == str(node)  # $SLURM_NODEID read on that node
        assert argv[argv.index("--master_addr") + 1] == "node1" and argv[argv.index("--num_gpus") + 1] == "2"
        assert argv[argv.index("launch/pretrain.py"):] == ["launch/pretrain.py", "--config", CONFIG, *args]


def test_pdsh_mode_sends_only_a_resolved_config_file(tmp_path, stubs):
    """DeepSpeed's pdsh runner pastes its arguments into a remote shell command (it wraps only arguments
    with spaces in double quotes, where $(...) still runs): only the path of the resolved config goes."""
    plain = tmp_path / "plain_repo"  # pdsh mode refuses a repository path the remote shell would parse
    plain.symlink_to(ROOT)
    records, args, run_dir = _sbatch(tmp_path, stubs, "pdsh", plain)
    (launch,) = [r for r in records if r["prog"] == "deepspeed"]
    argv = launch["argv"]
    assert "--hostfile" in argv
    tail = argv[argv.index("launch/pretrain.py"):]
    assert tail[:2] == ["launch/pretrain.py", "--config"] and len(tail) == 3, tail
    cfg = load_config(tail[2], [])
    assert cfg.run.name == f"`touch {tmp_path}/pwned_by_backquotes`"
    assert cfg.train.optimizer.modality_lr_scale == {"image": 0.5}
    assert cfg.run.output_dir == str(run_dir)


def test_pdsh_mode_refuses_paths_the_remote_shell_would_interpret(tmp_path, stubs):
    bin_dir, py_dir, repo = stubs
    plain = tmp_path / "plain_repo"
    plain.symlink_to(ROOT)
    run_dir = tmp_path / f"run $(touch {tmp_path}/pwned_by_dir)"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(tmp_path / "record.jsonl"),
               MOT_LAUNCH="pdsh", MOT_REPO=str(plain), MOT_PYTHON=str(py_dir / "python"),
               SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_NUM_NODES="2")
    out = subprocess.run(["bash", SBATCH, CONFIG, f"run.output_dir={run_dir}"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pdsh mode" in out.stdout + out.stderr, out.stdout + out.stderr
    assert _nothing_ran(tmp_path)
    assert not any(json.loads(line)["prog"] == "deepspeed" for line in open(tmp_path / "record.jsonl"))


def test_bad_config_stops_the_batch_script_before_any_launch(tmp_path, stubs):
    bin_dir, py_dir, _ = stubs
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(tmp_path / "record.jsonl"),
               MOT_REPO=ROOT, MOT_PYTHON=str(py_dir / "python"), SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="node1", SLURM_JOB_NUM_NODES="1")
    out = subprocess.run(["bash", SBATCH, CONFIG, "train.no_such_key=1"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "train.no_such_key" in out.stdout + out.stderr, out.stdout + out.stderr
    assert not os.path.exists(tmp_path / "record.jsonl") or "srun" not in (tmp_path / "record.jsonl").read_text()
