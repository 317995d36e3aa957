"""The multi-process harness itself: results come back, a failing rank fails fast with its traceback,
a hang fails at the timeout."""
import time

import pytest
import torch
import torch.distributed as dist

from mot_parallel.testing import DistributedTestError, run_distributed


def _sum_ranks():
    x = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(x)
    return dist.get_rank(), int(x.item())


def _rank1_raises():
    if dist.get_rank() == 1:
        raise ValueError("boom on rank one")
    dist.barrier()  # rank 0 would wait here forever


def _rank0_hangs():
    if dist.get_rank() == 0:
        time.sleep(600)


def test_results_in_rank_order():
    assert run_distributed(_sum_ranks, 4) == [(r, 6) for r in range(4)]


def test_failing_rank_fails_fast_with_traceback():
    t = time.monotonic()
    with pytest.raises(DistributedTestError) as e:
        run_distributed(_rank1_raises, 2, timeout=60)
    assert time.monotonic() - t < 30
    msg = str(e.value)
    assert "rank 1 failed" in msg and "boom on rank one" in msg and "ValueError" in msg
    # rank 0 is either killed in its barrier or fails there once gloo sees rank 1's socket close
    assert "rank 0: killed after another rank failed" in msg or "rank 0 failed" in msg


def test_hang_fails_at_timeout():
    t = time.monotonic()
    with pytest.raises(DistributedTestError, match="timed out after 4 s"):
        run_distributed(_rank0_hangs, 2, timeout=4)
    assert time.monotonic() - t < 20
