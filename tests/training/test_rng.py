"""The run's random streams (training/rng.py): TP-region dropout differs per TP rank while default-stream
dropout is identical across TP ranks; forking the TP stream never disturbs the default stream; saved
states replay exactly (checkpoint/recompute) and are stored as data only (a crafted file is refused)."""
import os

import pytest
import torch
import torch.nn.functional as F

from mot_parallel.config import ParallelLayout
from mot_parallel.distributed import ParallelTopology
from mot_parallel.testing import run_distributed
from mot_parallel.training import rng


def _body():
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    tracker = rng.seed_model_parallel(42, topo.pp_rank, topo.mpu())
    x = torch.ones(64)
    outside = F.dropout(x, 0.5)
    with tracker.fork():
        inside = F.dropout(x, 0.5)
    after = F.dropout(x, 0.5)
    gather = [torch.empty(64) for _ in range(2)]
    torch.distributed.all_gather(gather, inside, group=topo.tp_group)
    inside_differs = not torch.equal(gather[0], gather[1])
    torch.distributed.all_gather(gather, outside, group=topo.tp_group)
    outside_equal = torch.equal(gather[0], gather[1])
    torch.manual_seed(42)  # the default stream's seed at pp rank 0: a run without the fork
    plain = (F.dropout(x, 0.5), F.dropout(x, 0.5))
    return inside_differs, outside_equal, torch.equal(plain[0], outside) and torch.equal(plain[1], after)


def test_tp_stream_per_rank_default_stream_shared():
    for inside_differs, outside_equal, fork_left_default_alone in run_distributed(_body, 2):
        assert inside_differs and outside_equal and fork_left_default_alone


def _replay_body(path):
    topo = ParallelTopology.build(ParallelLayout())
    tracker = rng.seed_model_parallel(7, 0, topo.mpu())
    streams = rng.RNGStreams(torch.device("cpu"), tracker)
    rng.save(path, streams.state_dict())
    import numpy as np
    import random

    def draw():
        with tracker.fork():
            tp = torch.rand(3)
        return tp, torch.rand(3), np.random.rand(3).tolist(), random.random()
    first = draw()
    streams.load_state_dict(rng.load(path))
    second = draw()
    return all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(first, second))


def test_states_replay_from_a_saved_file(tmp_path):
    assert run_distributed(_replay_body, 1, args=(str(tmp_path / "rng.pt"),)) == [True]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mot_rng_exploit",))


def test_a_crafted_rng_file_is_refused_not_executed(tmp_path):
    path, marker = tmp_path / "rng_rank_0.pt", "/tmp/mot_rng_exploit"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"torch": _Exploit()}, path)
    with pytest.raises(RuntimeError, match="not a mot_parallel RNG state"):
        rng.load(str(path))
    assert not os.path.exists(marker)
