"""RNG tracker: TP-region dropout differs per TP rank, default-stream dropout is identical across TP ranks,
forking never disturbs the default stream, and saved states replay exactly (checkpoint/recompute)."""
import torch
import torch.nn.functional as F

from mot_parallel.distributed import Dims, ParallelTopology
from mot_parallel.tensor_parallel import make_tracker
from mot_parallel.testing import run_distributed


def _body():
    topo = ParallelTopology.build(Dims(tp=2))
    tracker = make_tracker(42, topo.tp_rank, topo.pp_rank, torch.device("cpu"))
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
    return inside_differs, outside_equal, outside, after


def test_tp_stream_per_rank_default_stream_shared():
    (d0, e0, out0, after0), (d1, e1, _, _) = run_distributed(_body, 2)
    assert d0 and d1 and e0 and e1
    # the fork did not consume the default stream: a run without the fork gives the same `after`
    tracker = make_tracker(42, 0, 0, torch.device("cpu"))
    x = torch.ones(64)
    assert torch.equal(F.dropout(x, 0.5), out0)
    assert torch.equal(F.dropout(x, 0.5), after0)
    del tracker


def test_states_replay():
    tracker = make_tracker(7, 0, 0, torch.device("cpu"))
    saved = tracker.get_states()
    with tracker.fork():
        a = torch.rand(5)
    tracker.set_states(saved)
    with tracker.fork():
        b = torch.rand(5)
    assert torch.equal(a, b)
