"""ColumnParallelLinear (feeding a row-parallel projection built from the region mappings, as the MoT
layers' row linears are), VocabParallelEmbedding and the vocab-parallel cross-entropy on TP 1/2/4 with SP
off/on: outputs and all gradients equal a single-process reference
built from the same (TP-size-independent) weights, max abs error <= 1e-5 (fp32)."""
import pytest
import torch
import torch.nn.functional as F

from mot_parallel.config import ParallelLayout
from mot_parallel.distributed import ParallelTopology
from mot_parallel.distributed.parallel_context import ParallelContext
from mot_parallel.tensor_parallel import (ColumnParallelLinear, SeededInit, VocabParallelEmbedding, copy_to_tp_region,
                                          draw_full, gather_from_sp_region, normal_init, param_seed,
                                          reduce_from_tp_region, reduce_scatter_to_sp_region, scatter_to_sp_region,
                                          vocab_parallel_cross_entropy)
from mot_parallel.tensor_parallel.param_meta import tp_partition
from mot_parallel.testing import run_distributed

TOL = 1e-5
S, B, H, FFN, V, V_PAD = 8, 2, 16, 32, 50, 64


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _full(name, shape):
    return draw_full(shape, normal_init(0.02), param_seed(7, name))


def _mlp_body(tp, sp):
    topo = ParallelTopology.build(ParallelLayout(tp=tp))
    g, r = topo.tp_group, topo.tp_rank
    par = ParallelContext.of(g, sp)
    fc1 = ColumnParallelLinear(H, FFN, parallel=par, init=SeededInit(normal_init(0.02), param_seed(7, "fc1")))
    fsl = slice(r * FFN // tp, (r + 1) * FFN // tp)
    fc2_w = _full("fc2", (H, FFN))[:, fsl].clone().requires_grad_()  # a row-parallel shard
    fc2_b = _rand(H, seed=4).requires_grad_()
    with torch.no_grad():  # non-zero biases so their grads/paths are exercised
        fc1.bias.copy_(_rand(FFN, seed=3).chunk(tp)[r])
    x_full, w_out = _rand(S, B, H, seed=1), _rand(S, B, H, seed=2)
    x = (x_full.chunk(tp)[r] if sp else x_full).clone().requires_grad_()
    h, _ = fc1(x)
    partial = F.linear(F.gelu(h), fc2_w)
    y = (reduce_scatter_to_sp_region(partial, g) if sp else reduce_from_tp_region(partial, g)) + fc2_b
    y_full = gather_from_sp_region(y, g, grad_is_partial=False) if sp else y
    (y_full * w_out).sum().backward()
    # reference: plain linears with the unsharded weights (drawn the same way)
    W1, W2 = _full("fc1", (FFN, H)).requires_grad_(), _full("fc2", (H, FFN)).requires_grad_()
    b1, b2 = _rand(FFN, seed=3).requires_grad_(), _rand(H, seed=4).requires_grad_()
    xr = x_full.clone().requires_grad_()
    yr = F.linear(F.gelu(F.linear(xr, W1, b1)), W2, b2)
    (yr * w_out).sum().backward()
    rows = slice(r * S // tp, (r + 1) * S // tp)
    b2_grad = fc2_b.grad.clone()
    if sp:  # replicated bias under SP: each rank holds the grad of its own tokens -> sum over TP
        torch.distributed.all_reduce(b2_grad, group=g)
    return {
        "init_fc1": (fc1.weight - W1.detach()[fsl]).abs().max().item(),

        "out": (y_full - yr).abs().max().item(),
        "dx": (x.grad - (xr.grad[rows] if sp else xr.grad)).abs().max().item(),
        "dW1": (fc1.weight.grad - W1.grad[fsl]).abs().max().item(),
        "db1": (fc1.bias.grad - b1.grad[fsl]).abs().max().item(),
        "dW2": (fc2_w.grad - W2.grad[:, fsl]).abs().max().item(),
        "db2": (b2_grad - b2.grad).abs().max().item(),
        "tags": (tp_partition(fc1.weight) == ((0, None) if tp > 1 else (-1, None)),
                 tp_partition(fc1.bias) == ((0, None) if tp > 1 else (-1, None))),
    }


def _gather_output_body(tp):
    """gather_output=True on the column layer: every rank gets the whole output."""
    topo = ParallelTopology.build(ParallelLayout(tp=tp))
    col = ColumnParallelLinear(H, FFN, parallel=topo.context(), init=SeededInit(normal_init(0.02), 11), bias=False,
                               gather_output=True)
    x_full, w_out = _rand(S, B, H, seed=1), _rand(S, B, FFN, seed=2)
    x = x_full.clone().requires_grad_()
    h, bias = col(x)
    (torch.tanh(h) * w_out).sum().backward()
    W1 = draw_full((FFN, H), normal_init(0.02), 11).requires_grad_()
    xr = x_full.clone().requires_grad_()
    hr = F.linear(xr, W1)
    (torch.tanh(hr) * w_out).sum().backward()
    return {"h": (h - hr).abs().max().item(), "dx": (x.grad - xr.grad).abs().max().item(),
            "bias_is_none": bias is None}


def _embed_ce_body(tp, sp):
    topo = ParallelTopology.build(ParallelLayout(tp=tp))
    g, r = topo.tp_group, topo.tp_rank
    par = ParallelContext.of(g, sp)
    emb = VocabParallelEmbedding(V_PAD, H, parallel=par, init=SeededInit(normal_init(0.02), param_seed(7, "emb")))
    head = ColumnParallelLinear(H, V_PAD, parallel=par, init=SeededInit(normal_init(0.02), param_seed(7, "head")),
                                bias=False)
    ids = torch.randint(0, V, (S, B), generator=torch.Generator().manual_seed(5))
    target = torch.randint(0, V, (S, B), generator=torch.Generator().manual_seed(6))
    target[0, 0] = target[3, 1] = -100  # ignored positions
    e = emb(ids)
    logits, _ = head(e)  # [S, B, V_PAD/tp], SP gathers the sequence inside the column layer
    loss = vocab_parallel_cross_entropy(logits, target, g, vocab_size=V)
    loss.sum().backward()
    E, Wh = _full("emb", (V_PAD, H)).requires_grad_(), _full("head", (V_PAD, H)).requires_grad_()
    er = F.embedding(ids, E)
    lr_full = F.linear(er, Wh)
    loss_ref = F.cross_entropy(lr_full[..., :V].reshape(-1, V), target.reshape(-1), reduction="none",
                               ignore_index=-100).view(S, B)
    loss_ref.sum().backward()
    vsl, rows = slice(r * V_PAD // tp, (r + 1) * V_PAD // tp), slice(r * S // tp, (r + 1) * S // tp)
    return {
        "embed_out": (e - (er[rows] if sp else er)).abs().max().item(),
        "logits": (logits - lr_full[..., vsl]).abs().max().item(),
        "loss": (loss - loss_ref).abs().max().item(),
        "d_embed": (emb.weight.grad - E.grad[vsl]).abs().max().item(),
        "d_head": (head.weight.grad - Wh.grad[vsl]).abs().max().item(),
        "ignored_zero": float(loss[0, 0].abs() + loss[3, 1].abs()),
    }


def _ce_grads_body(tp):
    """CE gradient w.r.t. sharded logits equals autograd through F.cross_entropy on the gathered logits."""
    topo = ParallelTopology.build(ParallelLayout(tp=tp))
    g, r = topo.tp_group, topo.tp_rank
    full = (_rand(12, V_PAD, seed=9) * 4).requires_grad_()
    target = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(10))
    target[5] = -100
    mine = full.detach()[:, r * V_PAD // tp:(r + 1) * V_PAD // tp].clone().requires_grad_()
    scale = _rand(12, seed=11)
    (vocab_parallel_cross_entropy(copy_to_tp_region(mine, None), target, g, vocab_size=V) * scale).sum().backward()
    (F.cross_entropy(full[:, :V], target, reduction="none") * scale).sum().backward()
    return (mine.grad - full.grad[:, r * V_PAD // tp:(r + 1) * V_PAD // tp]).abs().max().item()


CASES = [(tp, sp) for tp in (1, 2, 4) for sp in (False, True)]


def _check(results, tol=TOL):
    for rank, res in enumerate(results):
        for k, v in res.items():
            if isinstance(v, float):
                assert v <= tol, f"rank {rank}: {k} differs by {v}"


@pytest.mark.parametrize("tp,sp", CASES, ids=[f"tp{t}-sp{int(s)}" for t, s in CASES])
def test_column_then_row_parallel_mlp(tp, sp):
    results = run_distributed(_mlp_body, tp, args=(tp, sp))
    _check(results)
    for res in results:
        assert res["tags"] == (True, True)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gather_output(tp):
    results = run_distributed(_gather_output_body, tp, args=(tp,))
    _check(results)
    assert all(r["bias_is_none"] for r in results)


@pytest.mark.parametrize("tp,sp", CASES, ids=[f"tp{t}-sp{int(s)}" for t, s in CASES])
def test_vocab_parallel_embedding_and_cross_entropy(tp, sp):
    results = run_distributed(_embed_ce_body, tp, args=(tp, sp))
    _check(results)
    assert all(r["ignored_zero"] == 0.0 for r in results)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_cross_entropy_grads_match_torch(tp):
    assert max(run_distributed(_ce_grads_body, tp, args=(tp,))) <= TOL


def test_init_independent_of_tp_size_without_processes():
    """The shard a TP=2 / TP=4 rank draws is the slice of the TP=1 weight (column: rows, row: columns)."""
    from mot_parallel.tensor_parallel.weight_init import init_sharded_
    full = torch.empty(FFN, H)
    init_sharded_(full, normal_init(0.02), (FFN, H), 0, 0, 1, seed=99)
    for tp in (2, 4):
        for r in range(tp):
            col, row = torch.empty(FFN // tp, H), torch.empty(FFN, H // tp)
            init_sharded_(col, normal_init(0.02), (FFN, H), 0, r, tp, seed=99)
            init_sharded_(row, normal_init(0.02), (FFN, H), 1, r, tp, seed=99)
            assert torch.equal(col, full.chunk(tp, 0)[r]) and torch.equal(row, full.chunk(tp, 1)[r])
    # blocks: a fused [gate; up] weight, each rank takes its slice of both halves
    fused = torch.empty(FFN // 2, H)
    init_sharded_(fused, normal_init(0.02), (FFN, H), 0, 1, 2, seed=99, blocks=[FFN // 2, FFN // 2])
    gate, up = full.chunk(2, 0)
    assert torch.equal(fused, torch.cat([gate.chunk(2, 0)[1], up.chunk(2, 0)[1]]))
    # the global RNG is untouched by seeded init
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    init_sharded_(torch.empty(4, 4), normal_init(0.02), (4, 4), 0, 0, 1, seed=1)
    assert torch.equal(torch.rand(1), a)


def test_sp_scatter_is_inverse_of_gather():
    x = _rand(S, B, H, seed=1)
    assert torch.equal(gather_from_sp_region(scatter_to_sp_region(x, None), None), x)
