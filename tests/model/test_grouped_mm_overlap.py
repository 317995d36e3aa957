"""Overlapped TP collectives in the column linears' backward (sp_grouped_mm.py, tp_grouped_mm.py), on 2
gloo processes:
- outputs and gradients (x and every modality's weight, a zero-token modality included) equal the unfused
  composition they replace (blocking all-gather + grouped GEMM under SP; copy-to-TP + grouped GEMM under
  plain TP), bit for bit: the same GEMMs and sums, only the schedule moves; even and uneven SP splits;
- the schedule is Megatron's: under SP the all-gather of x is launched before the dx GEMM and awaited
  after it, the dx reduce-scatter is launched before the weight-gradient GEMMs and awaited after them;
  under plain TP the dx all-reduce is launched before the weight-gradient GEMMs and awaited after them.
(The layer-level collective sequence is pinned by test_model_tensor_parallel.py::test_layer_collectives_identical...)
"""
import pytest
import torch
import torch.distributed as dist

from mot_parallel.config import ParallelLayout
from mot_parallel.distributed import ParallelTopology
from mot_parallel.distributed import collectives as C
from mot_parallel.model import sp_grouped_mm as SPM
from mot_parallel.model import tp_grouped_mm as TPM
from mot_parallel.model.grouped_ops import grouped_mm
from mot_parallel.tensor_parallel import mappings as M
from mot_parallel.testing import run_distributed

COUNTS = (5, 0, 9)    # tokens per modality after the gather (modality 1 has none)
BLOCKS = (6, 4)       # this rank's output blocks (e.g. q and kv shards)
IN = 8


def _inputs(rank, n_local, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(sum(BLOCKS), IN, generator=g).requires_grad_() for _ in COUNTS]
    g.manual_seed(seed + 1 + rank)  # each rank its own slice / its own output gradient
    x = torch.randn(n_local, IN, generator=g).requires_grad_()
    grads = [torch.randn(sum(COUNTS), b, generator=g) for b in BLOCKS]
    return x, ws, grads


def _grads(fn, x, ws, out_grads):
    ys = fn(x, ws)
    torch.autograd.backward(ys, out_grads)
    return [y.detach() for y in ys], x.grad, [w.grad for w in ws]


def _equal_body(sp, sizes):
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    group, rank = topo.tp_group, topo.tp_rank
    n_local = sizes[rank] if sp else sum(COUNTS)
    if sp:
        fused = lambda x, ws: SPM.sp_gather_grouped_mm(x, ws, COUNTS, BLOCKS, group, sizes)  # noqa: E731
        unfused = lambda x, ws: grouped_mm(M.gather_from_sp_region(x, group, sizes), ws, COUNTS, BLOCKS)  # noqa
    else:
        fused = lambda x, ws: TPM.tp_grouped_mm(x, ws, COUNTS, BLOCKS, group)  # noqa: E731
        unfused = lambda x, ws: grouped_mm(M.copy_to_tp_region(x, group), ws, COUNTS, BLOCKS)  # noqa: E731
    a = _grads(fused, *_inputs(rank, n_local))
    b = _grads(unfused, *_inputs(rank, n_local))
    same = [torch.equal(p, q) for p, q in zip(a[0] + [a[1]] + a[2], b[0] + [b[1]] + b[2])]
    return same, float(a[2][1].abs().sum())


@pytest.mark.parametrize("sp,sizes", [(True, (7, 7)), (True, (8, 6)), (False, None)],
                         ids=["sp-even", "sp-uneven", "tp"])
def test_overlapped_backward_equals_unfused(sp, sizes):
    for same, zero_modality_grad in run_distributed(_equal_body, 2, args=(sp, sizes), timeout=60):
        assert all(same) and len(same) == len(BLOCKS) + 1 + len(COUNTS), same
        assert zero_modality_grad == 0.0


class _LoggedWork:
    def __init__(self, work, log, name):
        self.work, self.log, self.name = work, log, name

    def wait(self, *args):
        self.log.append(f"wait:{self.name}")
        return self.work.wait(*args)


def _schedule_body(sp):
    """Log collective launches/waits and the GEMMs of one backward."""
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    group, rank = topo.tp_group, topo.tp_rank
    log = []
    module = SPM if sp else TPM
    originals = {}

    def wrap_collective(name):
        fn = originals[name] = getattr(dist, name)

        def launched(*args, **kwargs):
            work = fn(*args, **kwargs)
            log.append(f"start:{name}")
            return _LoggedWork(work, log, name) if kwargs.get("async_op") else work
        return launched

    def wrap_gemm(name):
        fn = originals[name] = getattr(module, name)

        def gemm(*args, **kwargs):
            log.append(name)
            return fn(*args, **kwargs)
        return gemm

    names = [n for n in ("all_gather_single", "all_gather_into_tensor", "reduce_scatter_single",
                         "reduce_scatter_tensor", "all_reduce") if hasattr(dist, n)]
    x, ws, grads = _inputs(rank, 7 if sp else sum(COUNTS))
    ys = SPM.sp_gather_grouped_mm(x, ws, COUNTS, BLOCKS, group) if sp else \
        TPM.tp_grouped_mm(x, ws, COUNTS, BLOCKS, group)
    for n in names:
        setattr(dist, n, wrap_collective(n))
    for n in ("grouped_mm_input_grad", "grouped_mm_weight_grads"):
        setattr(module, n, wrap_gemm(n))
    try:
        torch.autograd.backward(ys, grads)
    finally:
        for n, fn in originals.items():
            setattr(dist if hasattr(dist, n) and n in names else module, n, fn)
    kind = {n: ("all_gather" if "gather" in n else "reduce_scatter" if "scatter" in n else n) for n in names}
    return [e if ":" not in e else e.split(":")[0] + ":" + kind[e.split(":")[1]] for e in log]


@pytest.mark.parametrize("sp", [True, False], ids=["sp", "tp"])
def test_backward_schedule_overlaps_like_megatron(sp):
    if sp:
        expected = ["start:all_gather", "grouped_mm_input_grad", "wait:all_gather",
                    "start:reduce_scatter", "grouped_mm_weight_grads", "wait:reduce_scatter"]
    else:
        expected = ["grouped_mm_input_grad", "start:all_reduce", "grouped_mm_weight_grads", "wait:all_reduce"]
    for log in run_distributed(_schedule_body, 2, args=(sp,), timeout=60):
        assert log == expected, log


def test_single_process_needs_no_group():
    x, ws, grads = _inputs(0, sum(COUNTS))
    ys = TPM.tp_grouped_mm(x, ws, COUNTS, BLOCKS, None)
    ref = grouped_mm(x, ws, COUNTS, BLOCKS)
    assert all(torch.equal(a, b) for a, b in zip(ys, ref))
    assert C.group_size(None) == 1
