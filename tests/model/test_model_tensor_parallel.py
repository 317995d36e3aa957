"""MoT under tensor and sequence parallelism on gloo processes:
- TP in {1, 2, 4} x SP off/on: the last layer's hidden states, the per-modality loss sums and every
  parameter gradient (gathered to full, after the TP sum of replicated partial grads) equal a TP=1
  model built in the same process from the same seeds; relative error <= 1e-5 (fp32);
- the TP collectives of one layer's forward+backward (calls and bytes) are identical for dense and
  MoT with M = 1, 2, 3 modalities, and equal to a dense Megatron layer's pattern."""
import pytest
import torch
import torch.distributed as dist

from mot_parallel.distributed.parallel_context import ParallelContext
from mot_parallel.config import ParallelLayout
from mot_parallel.distributed import ParallelTopology
from mot_parallel.distributed import collectives as C
from mot_parallel.model import ModelSettings, MoTLayer, MoTModel
from mot_parallel.tensor_parallel import allreduce_tp_partial_grads, register_tp_grad_hooks, tp_partial_grad_params
from mot_parallel.tensor_parallel.layout import gather_full
from mot_parallel.testing import run_distributed

S, B = 8, 2
TOL = 1e-5


def settings(**kw):
    base = dict(hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=4, ffn_hidden_size=64, vocab_size=40,
                vocab_multiple=32, modalities=("text", "image", "speech"), seed=5, qk_norm=True)
    base.update(kw)
    return ModelSettings(**base)


def _batch():
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 40, (S, B), generator=g), torch.randint(0, 40, (S, B), generator=g)
    mods = torch.randint(0, 3, (S, B), generator=g)
    mods[mods == 1] = 2  # modality 1 has no tokens in this micro-batch
    segments = torch.tensor([[0, 0]] * 3 + [[1, 0]] * 3 + [[2, 1]] * 2)
    return tokens, labels, mods, segments


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def _run(model, batch):
    tokens, labels, mods, segments = batch
    captured = {}
    model.layers[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    plan = model.build_plan(mods, segments)
    out = model(tokens, plan, labels, mods)
    (out.loss_sum * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    return out, captured["h"], plan


def _tp_body(tp, sp, case, sync="allreduce"):
    topo = ParallelTopology.build(ParallelLayout(tp=tp))
    s = settings(**case)
    parallel = ParallelContext.of(topo.tp_group, sp)
    model = MoTModel(s, parallel=parallel)
    if sync == "hooks":  # the route for engines that consume grads during backward (DeepSpeed ZeRO)
        register_tp_grad_hooks(tp_partial_grad_params(model), topo.tp_group)
    out, hidden, plan = _run(model, _batch())
    if sync == "allreduce":
        allreduce_tp_partial_grads(tp_partial_grad_params(model), topo.tp_group)
    ref = MoTModel(settings(vocab_multiple=32 * tp, **case))  # TP = 1, same seeds and the same vocabulary padding
    ref_out, ref_hidden, _ = _run(ref, _batch())
    if parallel.sequence_parallel:  # this rank holds a contiguous piece of the (grouped) tokens
        hidden = C.all_gather_dim0(hidden.detach().reshape(-1, s.hidden_size), topo.tp_group, plan.sp_sizes)
    errs = {"hidden": _rel(hidden.reshape(-1, s.hidden_size), ref_hidden.reshape(-1, s.hidden_size)),
            "loss_sum": _rel(out.loss_sum, ref_out.loss_sum),
            "count": float((out.token_count - ref_out.token_count).abs().max())}
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        errs["w:" + name] = _rel(gather_full(p.detach(), p, topo.tp_group), ref_params[name].detach())
        errs["g:" + name] = _rel(gather_full(p.grad, p, topo.tp_group), ref_params[name].grad)
    return errs


CASES = [(tp, sp, case) for tp in (1, 2, 4) for sp in (False, True)
         for case in ({}, {"untie": frozenset(), "qk_norm": False})]


@pytest.mark.parametrize("tp,sp,case", CASES,
                         ids=[f"tp{t}-sp{int(s)}-{'dense' if c else 'mot'}" for t, s, c in CASES])
def test_tp_sp_match_single_process(tp, sp, case):
    for rank, errs in enumerate(run_distributed(_tp_body, tp, args=(tp, sp, case), timeout=120)):
        assert len(errs) > 10
        bad = {k: v for k, v in errs.items() if v > TOL}
        assert not bad, f"rank {rank}: {bad}"


def test_tp_grad_hooks_equal_post_backward_allreduce():
    for rank, errs in enumerate(run_distributed(_tp_body, 2, args=(2, True, {}, "hooks"), timeout=120)):
        bad = {k: v for k, v in errs.items() if v > TOL}
        assert not bad, f"rank {rank}: {bad}"


def _count_body(sp):
    """Record every torch.distributed collective of one layer's forward + backward, per variant."""
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    log = []
    originals = {}
    names = [n for n in ("all_reduce", "all_gather_single", "all_gather_into_tensor", "reduce_scatter_single",
                         "reduce_scatter_tensor", "all_gather", "reduce_scatter", "broadcast") if hasattr(dist, n)]

    def wrap(name):
        fn = originals[name]

        def counted(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            log.append((name, tuple(t.numel() * t.element_size() for t in tensors)))
            return fn(*args, **kwargs)
        return counted

    results = {}
    variants = {"dense": dict(untie=frozenset(), modalities=("text",)), "M1": dict(modalities=("text",)),
                "M2": dict(modalities=("text", "image")), "M3": {}}
    for label, kw in variants.items():
        s = settings(**kw)
        parallel = ParallelContext.of(topo.tp_group, sp)
        layer = MoTLayer(s, 0, parallel=parallel)
        model = MoTModel(s, parallel=parallel, layer_numbers=[])  # for the plan and rope
        _, _, mods, segments = _batch()
        mods = mods % s.num_modalities
        plan = model.build_plan(mods, segments)
        rope = model.rope(plan, torch.device("cpu"))
        n_local = plan.sp_sizes[topo.tp_rank] if sp else S * B
        x = torch.randn(n_local, 1, s.hidden_size, requires_grad=True)
        for name in names:
            originals[name] = getattr(dist, name)
            setattr(dist, name, wrap(name))
        try:
            log.clear()
            layer(x, plan, rope).sum().backward()
        finally:
            for name in names:
                setattr(dist, name, originals[name])
        results[label] = list(log)
    return results


@pytest.mark.parametrize("sp", [False, True], ids=["sp-off", "sp-on"])
def test_layer_collectives_identical_for_any_number_of_modalities(sp):
    for res in run_distributed(_count_body, 2, args=(sp,)):
        assert res["M1"] == res["dense"] and res["M2"] == res["dense"] and res["M3"] == res["dense"], res
        tokens_bytes = S * B * 64 * 4  # [N, h] fp32
        ops = [op for op, _ in res["dense"]]
        if sp:  # as a dense Megatron layer under SP. fwd: AG before QKV, RS after O, AG before FFN, RS after
            # down; bwd: AG (adjoint of down's RS), AG (FFN input again: only the local slice was saved),
            # RS (its dx), then the same for O and QKV
            kinds = ["gather" if "gather" in o else "scatter" if "scatter" in o else o for o in ops]
            assert kinds == ["gather", "scatter", "gather", "scatter"] + ["gather", "gather", "scatter"] * 2, ops
            assert all(max(sizes) == tokens_bytes for _, sizes in res["dense"])
        else:  # fwd: all-reduce after W_O and FFN down; bwd: before FFN up and QKV
            assert ops == ["all_reduce"] * 4
            assert all(sizes == (tokens_bytes,) for _, sizes in res["dense"])
