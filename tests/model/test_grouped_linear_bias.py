"""Q/K/V biases (`model.qkv_bias`, Qwen2/BAGEL): the grouped linear adds each modality's own bias to its
tokens (vs a per-group reference: outputs and grads, 1e-5); TP=2 (+SP) equals TP=1 in the loss and every
gradient (1e-5 relative) with the fused [q; k; v] bias sharded block-wise like its weight, loaded and
gathered through the parameters' TP tags; the planner and the dry run count the biases exactly."""
import pytest
import torch

from mot_parallel.config import load_config
from mot_parallel.testing import run_distributed
from hf_utils import MOT, perturb


class _Plan:
    def __init__(self, counts):
        self.counts = counts

    @property
    def gathered_counts(self):
        return self.counts

    stream_counts = gathered_counts


@pytest.mark.parametrize("counts", [(5, 0, 3), (0, 0, 7), (1, 6, 2), (4, 4, 4)])
def test_grouped_linear_adds_each_modalitys_bias(counts):
    """y rows of group m = x W_m^T + b_m (fused [q; k; v] output), outputs and grads vs a per-group reference."""
    from mot_parallel.model.grouped_linear import GroupedColumnParallelLinear
    torch.manual_seed(sum(counts))
    lin = GroupedColumnParallelLinear(16, [8, 8, 8], ["text", "image", "speech"], bias=True)
    with torch.no_grad():
        for b in lin.bias.values():
            b.normal_()
    x = torch.randn(sum(counts), 16, requires_grad=True)
    (q, k, v), _ = lin.forward_blocks(x, _Plan(counts))
    upstream = torch.randn(sum(counts), 24)
    (torch.cat([q, k, v], 1) * upstream).sum().backward()
    ws = {m: lin.weight[m].detach().clone().requires_grad_() for m in lin.modalities}
    bs = {m: lin.bias[m].detach().clone().requires_grad_() for m in lin.modalities}
    x2 = x.detach().clone().requires_grad_()
    rows = [x2[sum(counts[:i]):sum(counts[:i + 1])] @ ws[m].t() + bs[m] for i, m in enumerate(lin.modalities)]
    (torch.cat(rows) * upstream).sum().backward()
    assert torch.allclose(torch.cat([q, k, v], 1), torch.cat(rows).detach(), atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    for m in lin.modalities:
        assert torch.allclose(lin.bias[m].grad, bs[m].grad, atol=1e-5)
        assert torch.allclose(lin.weight[m].grad, ws[m].grad, atol=1e-5)


def _bias_settings(**kw):
    from mot_parallel.model import ModelSettings
    return ModelSettings(hidden_size=64, num_layers=2, num_heads=8, num_kv_heads=4, ffn_hidden_size=64,
                         vocab_size=40, vocab_multiple=32, modalities=("text", "image", "speech"), seed=5,
                         qkv_bias=True, **kw)


def _bias_step(model):
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 40, (8, 2), generator=g), torch.randint(0, 40, (8, 2), generator=g)
    mods = torch.randint(0, 3, (8, 2), generator=g)
    out = model(tokens, model.build_plan(mods), labels, mods)
    (out.loss_sum * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    return out.loss_sum.detach()


def _qkv_bias_tp_body(sp):
    from mot_parallel.convert.engine_io import load_weights
    from mot_parallel.config import ParallelLayout
    from mot_parallel.distributed import ParallelTopology
    from mot_parallel.distributed.parallel_context import ParallelContext
    from mot_parallel.model import MoTModel
    from mot_parallel.tensor_parallel import allreduce_tp_partial_grads, tp_partial_grad_params
    from mot_parallel.tensor_parallel.layout import gather_full
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    ref = MoTModel(_bias_settings())
    perturb(ref, 3)  # biases are zero at init: draw them, so a mis-sharded bias changes the output
    full = {name: p.detach().clone() for name, p in ref.named_parameters()}
    model = MoTModel(_bias_settings(), parallel=ParallelContext.of(topo.tp_group, sp))
    load_weights(model, full.__getitem__, topo.tp_group)  # split by the parameters' own TP tags
    loss, ref_loss = _bias_step(model), _bias_step(ref)
    allreduce_tp_partial_grads(tp_partial_grad_params(model), topo.tp_group)

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()
    grads = dict(ref.named_parameters())
    errs = {"loss_sum": rel(loss, ref_loss)}
    for name, p in model.named_parameters():
        errs[name] = rel(gather_full(p.grad, p, topo.tp_group), grads[name].grad)
    return errs


@pytest.mark.parametrize("sp", [False, True], ids=["sp-off", "sp-on"])
def test_qkv_bias_tp2_matches_tp1(sp):
    for errs in run_distributed(_qkv_bias_tp_body, 2, args=(sp,), timeout=120):
        assert sum(".bias." in k for k in errs) == 6
        bad = {k: v for k, v in errs.items() if v > 1e-5}
        assert not bad, bad


def test_planner_and_dry_run_count_qkv_biases():
    from mot_parallel.flops import param_counts
    from mot_parallel.model import ModelSettings, MoTModel
    from mot_parallel.planner import model_params
    from mot_parallel.training.dry_run import check_rank
    cfg = load_config(None, MOT + ["model.qkv_bias=true", "model.untie=[attention,norms]"])
    s = ModelSettings.from_config(cfg)
    model = MoTModel(s, device="meta")
    assert model_params(s) == sum(p.numel() for p in model.parameters()) == param_counts(s)["total"]
    assert model_params(s) - model_params(s.with_(qkv_bias=False)) == 2 * 3 * (4 + 2 * 2) * 16
    for rank in range(2):
        report = check_rank(load_config(None, MOT + ["model.qkv_bias=true", "parallel.tensor_parallel=2"]), 2, rank)
        assert not report["problems"] and report["params"] == report["planned_params"]
