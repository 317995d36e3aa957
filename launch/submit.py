"""Submit a pretraining run to Slurm so that it can be re-submitted exactly as it was.

    python launch/submit.py --config configs/mot_7b_chameleon.yaml --nodes 32 [--gpus-per-node 8]
        [--time 24:00:00] [--partition p] [--account a] [--mode srun|deepspeed|pdsh] [--no-submit] [key=value ...]
    python launch/submit.py --config configs/demo_cpu.yaml --gpus-per-node 0 --procs-per-node 2   # CPU nodes

Into <run.output_dir>/submit/ it writes: the resolved config (config.yaml), the code revision
(revision.txt: `git rev-parse HEAD`, plus `git status --porcelain` and uncommitted.patch when the tree
is dirty) and submit.sh, the exact sbatch invocation of launch/slurm/pretrain.sbatch with these
options. Then it runs `sbatch submit.sh` (unless --no-submit). `sbatch <run>/submit/submit.sh`
re-submits the same run; it resumes from the run's latest checkpoint.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mot_parallel.cli import checked_config, int_in  # noqa: E402
from mot_parallel.config import dump_config  # noqa: E402
from mot_parallel.outputs import OutputError, claim_scratch  # noqa: E402

SNAPSHOT = "submit.py snapshot"  # the output mark of <run>/submit
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")


def slurm_time(text):
    if not SLURM_TIME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Slurm time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
    return text


def _git(*args):
    out = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--nodes", type=int_in(1, 1 << 16), default=1)
    ap.add_argument("--gpus-per-node", type=int_in(0, 64), default=8, help="0 for CPU-only tasks (tests)")
    ap.add_argument("--procs-per-node", type=int_in(1, 1024), default=None,
                    help="training processes per node (default: GPUs per node); srun mode starts them as Slurm "
                         "tasks, deepspeed/pdsh modes as the launcher's --num_gpus under one task per node")
    ap.add_argument("--cpus-per-task", type=int_in(1, 4096), default=None)
    ap.add_argument("--time", type=slurm_time, default="24:00:00", help="Slurm's time limit: [D-]HH:MM[:SS] or minutes")
    ap.add_argument("--partition")
    ap.add_argument("--account")
    ap.add_argument("--mode", choices=["srun", "deepspeed", "pdsh"], default="srun")
    ap.add_argument("--python", default=None, help="interpreter on the compute nodes (default: the repo's .venv)")
    ap.add_argument("--no-submit", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    procs = args.procs_per_node or args.gpus_per_node or 1
    cfg, _ = checked_config(args.config, args.overrides, world=args.nodes * procs)  # what the job would refuse
    run_dir = os.path.abspath(cfg.run.output_dir)
    snap = os.path.join(run_dir, "submit")
    try:  # the snapshot of the latest submission (resubmitting continues the run), never a directory not ours
        claim_scratch(snap, SNAPSHOT, "run.output_dir")
    except OutputError as e:
        sys.exit(f"error: {e}")
    cfg.run.output_dir = run_dir
    dump_config(cfg, os.path.join(snap, "config.yaml"))
    rev, status = _git("rev-parse", "HEAD").strip(), _git("status", "--porcelain")
    with open(os.path.join(snap, "revision.txt"), "w") as f:
        f.write(f"{rev or 'not a git checkout'}\n{status}")
    if status.strip():
        with open(os.path.join(snap, "uncommitted.patch"), "w") as f:
            f.write(_git("diff", "HEAD"))
    tasks = procs if args.mode == "srun" else 1
    sbatch = [f"--job-name=mot-{os.path.basename(run_dir)}", f"--nodes={args.nodes}", f"--ntasks-per-node={tasks}",
              f"--time={args.time}", f"--output={run_dir}/slurm-%j.out", f"--chdir={ROOT}"]
    sbatch.append(f"--gpus-per-node={args.gpus_per_node}")
    # CPU-only nodes: one core per process (a launcher task gets one per process it starts)
    cpus = args.cpus_per_task or (None if args.gpus_per_node else procs // tasks)
    if cpus:
        sbatch.append(f"--cpus-per-task={cpus}")
    for opt in ("partition", "account"):
        if getattr(args, opt):
            sbatch.append(f"--{opt}={getattr(args, opt)}")
    env = {"MOT_LAUNCH": args.mode, "MOT_REPO": ROOT, "MOT_GPUS_PER_NODE": str(procs)}
    if args.python:
        env["MOT_PYTHON"] = args.python
    script = os.path.join(snap, "submit.sh")
    with open(script, "w") as f:
        f.write("#!/bin/bash\n# Re-submit this run exactly as it was submitted: bash submit.sh (or sbatch it).\n")
        f.write(f"# code revision: {rev or 'unknown'} (see revision.txt)\n")
        f.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        f.write("exec sbatch --export=ALL " + " ".join(shlex.quote(a) for a in sbatch) + " "
                + shlex.quote(os.path.join(ROOT, "launch", "slurm", "pretrain.sbatch")) + " "
                + shlex.quote(os.path.join(snap, "config.yaml")) + "\n")
    os.chmod(script, 0o755)
    print(f"[submit] wrote {script} (config, revision {rev[:12] or '?'})")
    if args.no_submit:
        return
    out = subprocess.run(["bash", script], capture_output=True, text=True)
    print(out.stdout.strip() or out.stderr.strip())
    sys.exit(out.returncode)


if __name__ == "__main__":
    main()
