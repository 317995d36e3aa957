"""ColumnParallelLinear (the Megatron-contract linear; our MoTModel's output head) under sequence
parallelism with a token count TP does not divide: the all-gather and its reduce-scatter take
per-rank sizes (`sp_sizes`, as the grouped linears and the embedding do). Without them the pieces are
unequal: gloo fails, NCCL would hang or return garbage. 2 gloo processes at TP=2 vs one process, fp32:
- the linear alone on 7 tokens (4 + 3): outputs, input grads and weight grads <= 1e-5 relative;
- our MoTModel (3 modalities, QK-norm, GQA) with SP on 7 tokens: per-modality losses <= 1e-5 relative, every
  gradient too (replicated norm grads summed over TP first)."""
import torch
import torch.nn.functional as F

from mot_parallel.distributed.parallel_context import ParallelContext
from mot_parallel.testing import run_distributed

MODS = ("text", "image", "speech")
TOL = 1e-5


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def _uneven_column_body(n_tokens):
    from mot_parallel.config import ParallelLayout
    from mot_parallel.distributed import ParallelTopology
    from mot_parallel.distributed.collectives import even_sizes
    from mot_parallel.tensor_parallel import ColumnParallelLinear
    from mot_parallel.tensor_parallel.weight_init import SeededInit, draw_full, normal_init
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    g, r = topo.tp_group, topo.tp_rank
    sizes = even_sizes(n_tokens, 2)
    head = ColumnParallelLinear(16, 32, parallel=ParallelContext.of(g, True), init=SeededInit(normal_init(0.02), 11),
                                bias=False)
    x_full = torch.randn(n_tokens, 16, generator=torch.Generator().manual_seed(1))
    w_out = torch.randn(n_tokens, 32, generator=torch.Generator().manual_seed(2))
    lo = sum(sizes[:r])
    x = x_full[lo: lo + sizes[r]].clone().requires_grad_()
    y, _ = head(x, sp_sizes=sizes)
    cols = slice(r * 16, (r + 1) * 16)
    (y * w_out[:, cols]).sum().backward()
    W = draw_full((32, 16), normal_init(0.02), 11).requires_grad_()
    xr = x_full.clone().requires_grad_()
    (F.linear(xr, W) * w_out).sum().backward()
    return {"out": _rel(y, F.linear(x_full, W.detach())[:, cols]), "dx": _rel(x.grad, xr.grad[lo: lo + sizes[r]]),
            "dW": _rel(head.weight.grad, W.grad[cols])}


def _uneven_model_body(seq_len):
    """Our MoTModel with SP at TP=2 on s*b tokens TP does not divide vs the same model in one process."""
    from mot_parallel.config import ParallelLayout
    from mot_parallel.distributed import ParallelTopology
    from mot_parallel.model import MoTModel
    from mot_parallel.model.settings import ModelSettings
    from mot_parallel.tensor_parallel.layout import gather_full
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    s = ModelSettings(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, ffn_hidden_size=64, vocab_size=60,
                      vocab_multiple=32, modalities=MODS, qk_norm=True)
    g = torch.Generator().manual_seed(0)
    ids, mods = torch.randint(0, 60, (seq_len, 1), generator=g), torch.randint(0, 3, (seq_len, 1), generator=g)
    losses = {}
    for name, parallel in (("tp2_sp", ParallelContext.of(topo.tp_group, True)), ("one", ParallelContext())):
        model = MoTModel(s, parallel=parallel)
        plan = model.build_plan(mods)
        out = model(ids, plan, labels=ids, label_modalities=mods)
        out.loss_sum.sum().backward()
        losses[name] = (out.loss_sum.detach(), {n: gather_full(p.grad, p, parallel.tp_group) for n, p in model.named_parameters()})
    (l2, g2), (l1, g1) = losses["tp2_sp"], losses["one"]
    return _rel(l2, l1), {n: (g2[n], g1[n]) for n in g1}  # the head gathers every token: full losses per rank


def test_column_parallel_linear_under_sp_with_uneven_tokens():
    """7 tokens on 2 TP ranks (4 + 3): the all-gather and its reduce-scatter take per-rank sizes."""
    for res in run_distributed(_uneven_column_body, 2, args=(7,), timeout=300):
        assert all(v <= TOL for v in res.values()), res


def test_mot_model_head_under_sp_with_uneven_tokens():
    """The output head of our MoTModel (a ColumnParallelLinear) on 7 tokens at TP=2 + SP: the per-modality
    losses equal one process; every gradient equals it after summing the replicated (norm) grads over TP."""
    results = run_distributed(_uneven_model_body, 2, args=(7,), timeout=300)
    for loss_err, _ in results:
        assert loss_err <= TOL
    (_, grads0), (_, grads1) = results
    for n, (mine, ref) in grads0.items():
        summed = mine + grads1[n][0] if "norm" in n else mine  # SP/QK norms: each rank's partial
        assert _rel(summed, ref) <= TOL, n
