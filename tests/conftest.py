"""Markers: `slow` (skipped unless --slow or -m slow), `gpu` (skipped without CUDA)."""
import os
import sys

import pytest

from mot_parallel.corpus_building import register_demo_corpora
from mot_parallel.distributed import device

register_demo_corpora()  # data.path: demo trains on the demo corpora, as under launch/pretrain.py

# test processes fork from a server that has imported these once (see mot_parallel/testing/multiprocess.py)
os.environ.setdefault("MOT_TEST_PRELOAD", "deepspeed,megatron.core.parallel_state")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # helper modules (train_utils, mot_reference)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long test, not in the default run (tests/run.sh --slow)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped on CPU-only machines")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--slow") or "slow" in (config.getoption("-m") or "")
    has_gpu = device.accelerator_available()
    for item in items:  # markers, not keywords: keywords also hold directory names (a checkout in .../gpu/)
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with tests/run.sh --slow"))
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="gpu: no CUDA device here"))


@pytest.fixture(scope="session")
def two_nodes(tmp_path_factory):
    """A two-node Slurm cluster on this machine (slurm_cluster.TwoNodeSlurm), or, where network namespaces
    or Slurm are unavailable, the reason (a str)."""
    from slurm_cluster import TwoNodeSlurm, ensure_slurm_installed, namespaces_unavailable
    why = namespaces_unavailable() or ensure_slurm_installed()
    if why:
        yield why
        return
    cluster = TwoNodeSlurm(str(tmp_path_factory.mktemp("slurm2"))).start()
    cluster.env["OMP_NUM_THREADS"] = "1"  # 4 processes per node on 2 cores: more threads only contend
    yield cluster
    cluster.stop()
