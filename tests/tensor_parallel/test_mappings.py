"""Every region mapping, forward and backward, equals its single-process definition (TP 1/2/4, even and
uneven sequence splits), max abs error <= 1e-5 in fp32."""
import pytest
import torch

from mot_parallel.config import ParallelLayout
from mot_parallel.distributed import ParallelTopology
from mot_parallel.distributed.collectives import even_sizes
from mot_parallel.tensor_parallel import mappings as M
from mot_parallel.testing import run_distributed

TOL = 1e-5


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _body(tp, uneven):
    topo = ParallelTopology.build(ParallelLayout(tp=tp))
    g, r = topo.tp_group, topo.tp_rank
    s, b, h = (7 if uneven else 8), 2, 4 * tp
    sizes = even_sizes(s, tp) if uneven else None
    offs = [sum((sizes or [s // tp] * tp)[:i]) for i in range(tp + 1)]
    errs = {}

    def err(name, a, ref):
        errs[name] = max(errs.get(name, 0.0), (a - ref).abs().max().item() if a.numel() else 0.0)

    # per-rank upstream gradients, known to every rank so each can build the reference
    w = [_rand(s, b, h, seed=100 + k) for k in range(tp)]
    x_full = _rand(s, b, h, seed=1)

    # copy_to: identity forward; backward sums every rank's gradient
    x = x_full.clone().requires_grad_()
    y = M.copy_to_tp_region(x, g)
    (y * w[r]).sum().backward()
    err("copy_fwd", y, x_full)
    err("copy_bwd", x.grad, sum(w))

    # reduce_from: forward sums, backward passes through
    xr = _rand(s, b, h, seed=10 + r).requires_grad_()
    y = M.reduce_from_tp_region(xr, g)
    (y * w[0]).sum().backward()
    err("reduce_fwd", y, sum(_rand(s, b, h, seed=10 + k) for k in range(tp)))
    err("reduce_bwd", xr.grad, w[0])

    # scatter / gather along the last dim
    piece = h // tp
    x = x_full.clone().requires_grad_()
    y = M.scatter_to_tp_region(x, g)
    (y * w[r][..., r * piece:(r + 1) * piece]).sum().backward()
    err("scatter_last_fwd", y, x_full[..., r * piece:(r + 1) * piece])
    ref = torch.cat([w[k][..., k * piece:(k + 1) * piece] for k in range(tp)], -1)
    err("scatter_last_bwd", x.grad, ref)  # all-gathered: each rank's slice of the grad comes from its owner

    xr = x_full[..., r * piece:(r + 1) * piece].clone().requires_grad_()
    y = M.gather_from_tp_region(xr, g)
    (y * w[0]).sum().backward()
    err("gather_last_fwd", y, x_full)
    err("gather_last_bwd", xr.grad, w[0][..., r * piece:(r + 1) * piece])

    # sequence-parallel scatter / all-gather / reduce-scatter along dim 0
    lo, hi = offs[r], offs[r + 1]
    x = x_full.clone().requires_grad_()
    y = M.scatter_to_sp_region(x, g, sizes)
    (y * w[r][lo:hi]).sum().backward()
    err("sp_scatter_fwd", y, x_full[lo:hi])
    err("sp_scatter_bwd", x.grad, torch.cat([w[k][offs[k]:offs[k + 1]] for k in range(tp)]))

    xr = x_full[lo:hi].clone().requires_grad_()
    y = M.gather_from_sp_region(xr, g, sizes, grad_is_partial=True)
    (y * w[r]).sum().backward()
    err("sp_gather_fwd", y, x_full)
    err("sp_gather_bwd_reduce_scatter", xr.grad, sum(w)[lo:hi])

    xr = x_full[lo:hi].clone().requires_grad_()
    y = M.gather_from_sp_region(xr, g, sizes, grad_is_partial=False)
    (y * w[0]).sum().backward()
    err("sp_gather_bwd_split", xr.grad, w[0][lo:hi])

    xr = _rand(s, b, h, seed=20 + r).requires_grad_()
    y = M.reduce_scatter_to_sp_region(xr, g, sizes)
    (y * w[r][lo:hi]).sum().backward()
    err("sp_reduce_scatter_fwd", y, sum(_rand(s, b, h, seed=20 + k) for k in range(tp))[lo:hi])
    err("sp_reduce_scatter_bwd", xr.grad, torch.cat([w[k][offs[k]:offs[k + 1]] for k in range(tp)]))
    return errs


@pytest.mark.parametrize("uneven", [False, True], ids=["even", "uneven"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_mappings_match_reference(tp, uneven):
    for rank, errs in enumerate(run_distributed(_body, tp, args=(tp, uneven))):
        assert len(errs) == 15
        bad = {k: v for k, v in errs.items() if v > TOL}
        assert not bad, f"rank {rank}: {bad}"
