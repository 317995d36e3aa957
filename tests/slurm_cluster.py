"""Slurm clusters for tests, built from Debian's slurm-wlm and munge under a temp dir (installed with apt when
missing and running as root; SlurmUser=root). Every client command needs SLURM_CONF, which `env` carries,
run through `client` (a prefix: nothing on loopback, the controller's network namespace otherwise).

LocalSlurm     one host on loopback: munged + slurmctld + slurmd.
TwoNodeSlurm   two compute hosts and a controller, each in a network namespace of its own (plus UTS and
               mount namespaces: its own hostname, and an /etc/hosts naming the three), on a private bridge
               10.77.0.0/24 that lives in the controller's namespace; one munged serves all three through
               its socket file. Nothing is added to the machine's own network, hostname or /etc.
Why namespaces and not slurmd's multiple-daemon mode (Debian's build has it: MULTIPLE_SLURMD=Yes): its
daemons share one hostname, one address and one /etc/hosts, so the node names in SLURM_JOB_NODELIST
resolve nowhere (MASTER_ADDR from the node list would need the machine's /etc/hosts edited), every rank
reports the same host and all traffic stays on loopback: it would not exercise what changes with two nodes.
Each stop() ends what it started by PID: jobs are cancelled, the daemons stopped, any process left in a
namespace (`ip netns pids`) killed, then the namespaces deleted."""
import os
import shutil
import signal
import socket
import subprocess
import time

CONF = """ClusterName=mottest
SlurmctldHost={host}({addr})
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
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.%n.log
MailProg=/bin/true
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MessageTimeout=60
KillWait=120
SlurmdParameters=config_overrides
{nodes}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
NODE = "NodeName={name} NodeAddr={addr} CPUs={cpus} State=UNKNOWN"


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


def _hosts_of(nodes) -> list:
    return [name for name, _ in nodes]


class LocalSlurm:
    """One host on loopback."""
    client: list = []  # client commands (sbatch, squeue, scontrol ...) run as they are

    def __init__(self, directory: str):
        self.d = directory
        self.procs = []
        self.env = dict(os.environ, SLURM_CONF=os.path.join(directory, "slurm.conf"))

    # ---------------------------------------------------------------------------------------- set-up
    def _nodes(self):
        """[(node name, address)] of the compute hosts."""
        return [(socket.gethostname().split(".")[0], "127.0.0.1")]

    def _controller(self):
        return socket.gethostname().split(".")[0], "127.0.0.1"

    def _cpus(self) -> int:
        return os.cpu_count()

    def _launch(self, argv, node=None, log=None) -> None:
        """Start a daemon on `node` (None: the controller); it stays a child of this process (its PID)."""
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log, env=self.env))

    def _write_conf(self) -> None:
        host, addr = self._controller()
        nodes = "\n".join(NODE.format(name=n, addr=a, cpus=self._cpus()) for n, a in self._nodes())
        with open(self.env["SLURM_CONF"], "w") as f:
            f.write(CONF.format(host=host, addr=addr, d=self.d, p1=self._port(), p2=self._port(), nodes=nodes,
                                node_list=",".join(_hosts_of(self._nodes()))))

    def _port(self) -> int:
        return _free_port()

    def start(self, timeout: float = 60.0):
        d = self.d
        for sub in ["munge", "state"] + [os.path.join("spool", n) for n in _hosts_of(self._nodes())]:
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.chmod(os.path.join(d, "munge"), 0o755)
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self._write_conf()
        log = open(os.path.join(d, "daemons.log"), "w")
        try:
            self.procs.append(subprocess.Popen(
                ["munged", "-F", "-f", f"--key-file={key}", f"--socket={d}/munge/munge.socket.2",
                 f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/munge/munged.log",
                 f"--seed-file={d}/munge/munge.seed"], stdout=log, stderr=log))
            time.sleep(0.5)
            self._launch(["slurmctld", "-D", "-f", self.env["SLURM_CONF"]], None, log)
            for name in _hosts_of(self._nodes()):
                self._launch(["slurmd", "-D", "-N", name, "-f", self.env["SLURM_CONF"]], name, log)
            deadline = time.time() + timeout
            while time.time() < deadline:
                out = self.run(["sinfo", "-h", "-o", "%t %D"])
                if out.stdout.split() == ["idle", str(len(self._nodes()))]:
                    return self
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"Slurm did not come up; see {d}/daemons.log, slurmctld.log, slurmd.*.log")

    # ---------------------------------------------------------------------------------------- use
    def run(self, argv, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        """A client command on the controller's host."""
        return subprocess.run(self.client + list(argv), capture_output=True, text=True, env=self.env,
                              timeout=timeout, **kw)

    def squeue(self, job: str) -> str:
        return self.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()

    # ---------------------------------------------------------------------------------------- tear-down
    def _cancel_jobs(self, timeout: float = 60.0) -> None:
        if not self.procs:
            return
        try:
            self.run(["scancel", "--full", "--user", str(os.getuid())], timeout=30)
            deadline = time.time() + timeout
            while time.time() < deadline and self.run(["squeue", "-h"], timeout=30).stdout.strip():
                time.sleep(1)
        except (OSError, subprocess.SubprocessError):
            pass

    def stop(self) -> None:
        self._cancel_jobs()
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


SUBNET = "10.77.0"


def namespaces_unavailable() -> str:
    """'' when this process can create network namespaces (and veth pairs), else why not."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("nsenter") and shutil.which("unshare")):
        return "network namespaces need root and the ip, nsenter and unshare commands"
    name = f"motprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    try:
        veth = subprocess.run(["ip", "-n", name, "link", "add", "a0", "type", "veth", "peer", "name", "a1"],
                              capture_output=True, text=True)
        return f"cannot create a veth pair in a network namespace: {veth.stderr.strip()}" if veth.returncode else ""
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


class TwoNodeSlurm(LocalSlurm):
    """node1 and node2 (CPUs `cpus` each) + controller motctl, each in namespaces of its own (module doc)."""

    def __init__(self, directory: str, cpus: int = 4):
        super().__init__(directory)
        self.cpus, self.tag = cpus, f"mot{os.getpid()}"
        self.netns = {"motctl": self.tag + "c", "node1": self.tag + "n1", "node2": self.tag + "n2"}
        self.client = self._enter(None)
        self._made = []

    def _nodes(self):
        return [("node1", f"{SUBNET}.2"), ("node2", f"{SUBNET}.3")]

    def _controller(self):
        return "motctl", f"{SUBNET}.1"

    def _cpus(self) -> int:
        return self.cpus

    def _port(self) -> int:
        return 6817  # each host has its own network: no other cluster's daemons there

    def _enter(self, node) -> list:
        return ["nsenter", f"--net=/run/netns/{self.netns[node or 'motctl']}"]

    def _ip(self, *args) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def _network(self) -> None:
        os.makedirs(self.d, exist_ok=True)
        ctl = self.netns["motctl"]
        for ns in self.netns.values():
            self._ip("netns", "add", ns)
            self._made.append(ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", ctl, "link", "add", "br0", "type", "bridge")
        self._ip("-n", ctl, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        self._ip("-n", ctl, "link", "set", "br0", "up")
        for i, (name, addr) in enumerate(self._nodes()):
            ns, port = self.netns[name], f"v{i}"
            self._ip("-n", ctl, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("-n", ctl, "link", "set", port, "master", "br0")
            self._ip("-n", ctl, "link", "set", port, "up")
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
        with open(os.path.join(self.d, "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in [self._controller()] + self._nodes()))

    def _launch(self, argv, node=None, log=None) -> None:
        host = node or self._controller()[0]
        inner = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        self.procs.append(subprocess.Popen(  # nsenter, unshare and sh exec: the PID is the daemon's
            self._enter(node) + ["unshare", "--uts", "--mount", "sh", "-c", inner, "sh",
                                 os.path.join(self.d, "hosts"), host] + list(argv),
            stdout=log, stderr=log, env=self.env))

    def start(self, timeout: float = 60.0):
        try:
            self._network()
        except BaseException:
            self.stop()
            raise
        return super().start(timeout)

    def stop(self) -> None:
        super().stop()
        for ns in self._made:  # job processes a daemon left behind: by PID, then the namespace
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made = []
