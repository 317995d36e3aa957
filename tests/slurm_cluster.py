"""A single-host Slurm cluster on loopback for tests: munged + slurmctld + slurmd under a temp dir.

Needs Debian's slurm-wlm and munge (installed here with apt when missing and running as root) and
root (SlurmUser=root). Every client command needs SLURM_CONF, which `env` carries."""
import os
import shutil
import socket
import subprocess
import time

CONF = """ClusterName=mottest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket.2
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmctldPort={p1}
SlurmdPort={p2}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
MailProg=/bin/true
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def ensure_slurm_installed() -> str:
    """'' when slurmctld/slurmd/munged are available (installing them if we can), else the reason."""
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and cannot be (needs root and apt)"
    for cmd in (["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        if subprocess.run(cmd, capture_output=True).returncode == 0 and shutil.which("slurmctld"):
            return ""
    return "apt could not install slurm-wlm and munge"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    def __init__(self, directory: str):
        self.d = directory
        self.procs = []
        self.env = dict(os.environ, SLURM_CONF=os.path.join(directory, "slurm.conf"))

    def start(self, timeout: float = 30.0) -> "LocalSlurm":
        d = self.d
        for sub in ("munge", "state", "spool"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.chmod(os.path.join(d, "munge"), 0o755)
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        host = socket.gethostname().split(".")[0]
        with open(self.env["SLURM_CONF"], "w") as f:
            f.write(CONF.format(host=host, d=d, p1=_free_port(), p2=_free_port(), cpus=os.cpu_count()))
        log = open(os.path.join(d, "daemons.log"), "w")
        self.procs.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--key-file={key}", f"--socket={d}/munge/munge.socket.2",
             f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/munge/munged.log",
             f"--seed-file={d}/munge/munge.seed"], stdout=log, stderr=log))
        time.sleep(0.5)
        for daemon in ("slurmctld", "slurmd"):
            self.procs.append(subprocess.Popen([daemon, "-D", "-f", self.env["SLURM_CONF"]], stdout=log, stderr=log,
                                               env=self.env))
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
            if out.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"Slurm did not come up; see {d}/daemons.log, slurmctld.log, slurmd.log")

    def squeue(self, job: str) -> str:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=self.env)
        return out.stdout.strip()

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
