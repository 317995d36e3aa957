"""On CPU each of a node's processes gets its share of the cores (device.share_cpu_threads, which init_distributed
calls): torch would give every process all of them, so N processes would run N x cores compute threads. A user's
OMP_NUM_THREADS is theirs and is kept. Each case runs in a fresh interpreter: the thread count is process-wide."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORES = len(os.sched_getaffinity(0))
_PROBE = ("import json, torch; from mot_parallel.distributed.device import share_cpu_threads; "
          "before = torch.get_num_threads(); got = share_cpu_threads({n}); "
          "print(json.dumps([before, got, torch.get_num_threads()]))")


def _probe(local_processes, omp=None):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update({"PYTHONPATH": ROOT}, **({"OMP_NUM_THREADS": omp} if omp else {}))
    out = subprocess.run([sys.executable, "-c", _PROBE.format(n=local_processes)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("local_processes", [1, 2, 3, 10 ** 6])
def test_each_local_process_gets_its_share_of_the_cores(local_processes):
    _, got, now = _probe(local_processes)
    assert got == now == max(1, CORES // local_processes)


def test_a_users_omp_num_threads_is_kept():
    before, got, now = _probe(2, omp="1")
    assert got is None and now == before == 1
