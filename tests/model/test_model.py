"""MoT layers and model on one process against references (fp32):
- an independent per-token-loop reference (tests/mot_reference.py) for random modality assignments,
  including a modality with zero tokens, both norm placements, QK-norm, GQA, untie subsets, document
  masking: outputs and every gradient within 1e-5 (relative to the reference's scale);
- MoT with 1 modality == dense (untie=[]) within 1e-6, forward and grads;
- M modalities with `shared_start` copies == dense for any assignment;
- a zero-token modality gets zero (not None) gradients."""
import pytest
import torch

from mot_parallel.distributed.collectives import VirtualGroup
from mot_parallel.distributed.parallel_context import ParallelContext
from mot_parallel.model import ModelSettings, MoTLayer, MoTModel, build_routing_plan
from mot_parallel.tensor_parallel.param_meta import modality_of
from mot_parallel.model.rope import rope_cos_sin
from mot_reference import leaf_copies, reference_layer, reference_model

S, B = 6, 2


def settings(**kw):
    base = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4, ffn_hidden_size=48, vocab_size=40,
                vocab_multiple=32, modalities=("text", "image", "speech"), seed=3)
    base.update(kw)
    return ModelSettings(**base)


def _mods(seed, m, skip=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, m, (S, B), generator=g)
    if skip is not None:  # make modality `skip` absent
        ids[ids == skip] = (skip + 1) % m
    return ids


def _run_layer(layer, s, x_seq, mods, segments=None):
    """Our layer on grouped order; returns the output back in sequence order."""
    plan = build_routing_plan(mods, s.num_modalities, routed=s.routed, segment_ids=segments)
    n, h = S * B, s.hidden_size
    rope = rope_cos_sin(plan.position_ids, S, B, s.head_dim, s.rope_theta, torch.device("cpu"))
    x = plan.to_grouped(x_seq.reshape(n, h)).view(S, B, h)
    y = layer(x, plan, rope)
    return plan.to_sequence(y.reshape(n, h)).view(S, B, h)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def _grad_close(ours, ref):
    """Within 1e-5 relative (or 1e-7 absolute); a copy the reference never used must be exactly zero."""
    if ref is None:
        return torch.count_nonzero(ours) == 0
    return _rel(ours, ref) < 1e-5 or (ours - ref).abs().max() < 1e-7


LAYER_CASES = [
    dict(),                                                   # full MoT, pre-norm, MHA
    dict(norm_placement="post"),                              # the paper's Eq. 1
    dict(qk_norm=True, num_kv_heads=2),                       # QK-norm + GQA
    dict(norm_placement="post", qk_norm=True, num_kv_heads=1),
    dict(untie=frozenset({"ffn"})),                           # FFN-only ablation
    dict(untie=frozenset({"attention"})),
    dict(untie=frozenset({"norms"}), qk_norm=True),
    dict(untie=frozenset({"attention", "ffn"}), num_kv_heads=2),
    dict(untie=frozenset()),                                  # dense
    dict(document_masking=True, num_kv_heads=2),              # packed documents
]


@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "mot")
@pytest.mark.parametrize("skip", [None, 1], ids=["all-present", "zero-token-modality"])
def test_layer_matches_per_token_reference(case, skip):
    s = settings(**case)
    layer = MoTLayer(s, layer_number=0)
    with torch.no_grad():  # non-trivial norm weights so per-modality norms are distinguishable
        for name, p in layer.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(hash(name) % 1000))
    mods = _mods(11, 3, skip)
    segments = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 1], [1, 1], [1, 2]]) if case.get("document_masking") else None
    x_seq = torch.randn(S, B, s.hidden_size, generator=torch.Generator().manual_seed(5))
    w_out = torch.randn(S, B, s.hidden_size, generator=torch.Generator().manual_seed(6))

    x = x_seq.clone().requires_grad_()
    y = _run_layer(layer, s, x, mods, segments)
    (y * w_out).sum().backward()

    W = leaf_copies(layer)
    xr = x_seq.clone().requires_grad_()
    positions = None
    if segments is not None:
        from mot_parallel.model import positions_from_segments
        positions = positions_from_segments(segments)
    yr = reference_layer(W, "", s, xr, mods, positions, segments)
    (yr * w_out).sum().backward()

    assert _rel(y, yr) < 1e-5
    assert _rel(x.grad, xr.grad) < 1e-5
    for name, p in layer.named_parameters():
        assert p.grad is not None, name
        assert _grad_close(p.grad, W[name].grad), name
    if skip is not None:  # the absent modality's weights: zero gradients, not None
        absent = [n for n, p in layer.named_parameters() if modality_of(p) == s.modalities[skip]]
        assert len(absent) == sum(k in s.untie for k in ("attention", "ffn", "norms")) * 2 + \
            (2 if s.qk_norm and "attention" in s.untie else 0)
        for name in absent:
            assert torch.count_nonzero(dict(layer.named_parameters())[name].grad) == 0, name


@pytest.mark.parametrize("case", [dict(), dict(untie_final_norm=True, norm_placement="post", qk_norm=True)],
                         ids=["mot", "post-qknorm-untied-final-norm"])
def test_model_matches_per_token_reference(case):
    s = settings(**case)
    model = MoTModel(s)
    with torch.no_grad():
        for w in model.head.final_norm.weights():
            w.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    tokens, labels = torch.randint(0, 40, (S, B), generator=g), torch.randint(0, 40, (S, B), generator=g)
    labels[2, 1] = -100
    mods, label_mods = _mods(3, 3, skip=2), _mods(4, 3)
    out = model(tokens, model.build_plan(mods), labels, label_mods)
    loss = (out.loss_sum * torch.tensor([1.0, 2.0, 3.0])).sum()
    loss.backward()
    W = leaf_copies(model)
    ref_sum, ref_count, _ = reference_model(W, s, tokens, mods, labels, label_mods)
    (ref_sum * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(out.token_count, ref_count)
    assert _rel(out.loss_sum, ref_sum) < 1e-5
    for name, p in model.named_parameters():
        assert _grad_close(p.grad, W[name].grad), name


def _train_forward(model, tokens, mods):
    out = model(tokens, model.build_plan(mods), tokens, mods)
    out.mean().backward()
    return out.mean().detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_one_modality_equals_dense():
    """MoT with M=1 (everything untied, so per-modality code paths) == dense, fwd and grads <= 1e-6."""
    mot = MoTModel(settings(modalities=("text",), qk_norm=True))
    dense = MoTModel(settings(modalities=("text",), untie=frozenset(), qk_norm=True))
    dense.load_state_dict({k.removesuffix(".weight.text") + ".weight" if k.endswith(".weight.text") else k: v
                           for k, v in mot.state_dict().items()})
    tokens = torch.randint(0, 40, (S, B), generator=torch.Generator().manual_seed(0))
    mods = torch.zeros(S, B, dtype=torch.long)
    l1, g1 = _train_forward(mot, tokens, mods)
    l2, g2 = _train_forward(dense, tokens, mods)
    assert (l1 - l2).abs() <= 1e-6
    for n in g1:
        d = n.removesuffix(".text")
        assert (g1[n] - g2[d]).abs().max() <= 1e-6, n


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_shared_start_equals_dense_for_any_assignment(placement):
    """M copies that start equal compute the dense function whatever the modality ids; the dense
    gradient is the sum of the copies' gradients."""
    kw = dict(norm_placement=placement, qk_norm=True, num_kv_heads=2, untie_final_norm=True)
    mot = MoTModel(settings(modality_copies="shared_start", **kw))
    dense = MoTModel(settings(untie=frozenset(), **dict(kw, untie_final_norm=False)))
    dense_params = dict(dense.named_parameters())

    def dense_name(n):  # layers.0.mlp.linear_fc1.weight.image -> layers.0.mlp.linear_fc1.weight
        return n.rsplit(".", 1)[0] if n.rsplit(".", 1)[-1] in mot.settings.modalities else n
    with torch.no_grad():
        for n, p in mot.named_parameters():
            dense_params[dense_name(n)].copy_(p)  # shared_start: every copy is equal
    tokens = torch.randint(0, 40, (S, B), generator=torch.Generator().manual_seed(0))
    for seed in range(3):
        mods = _mods(seed, 3, skip=seed if seed < 3 else None)
        mot.zero_grad(), dense.zero_grad()
        l1, g1 = _train_forward(mot, tokens, mods)
        l2, g2 = _train_forward(dense, tokens, mods)
        assert (l1 - l2).abs() <= 1e-6
        summed = {}
        for n, g in g1.items():  # the dense gradient is the sum of the copies' gradients
            summed[dense_name(n)] = summed.get(dense_name(n), 0) + g
        assert summed.keys() == g2.keys()
        for n in g2:
            assert (summed[n] - g2[n]).abs().max() <= 1e-6, n


def test_independent_copies_differ_and_shared_start_copies_equal():
    ind = MoTLayer(settings(), 0)
    shared = MoTLayer(settings(modality_copies="shared_start"), 0)
    w_ind, w_sh = ind.mlp.linear_fc1.weights(), shared.mlp.linear_fc1.weights()
    assert not torch.equal(w_ind[0], w_ind[1])
    assert torch.equal(w_sh[0], w_sh[1]) and torch.equal(w_sh[0], w_sh[2]) and torch.equal(w_sh[0], w_ind[0])
    # std 0.02 and the 1/sqrt(2L) output scaling
    assert abs(torch.stack(w_ind).std().item() - 0.02) < 0.003
    assert abs(torch.stack(ind.mlp.linear_fc2.weights()).std().item() - 0.02 / 2.0) < 0.002  # L = 2
    names = [n for n, _ in ind.named_parameters()]
    assert "mlp.linear_fc1.weight.image" in names and "self_attention.linear_qkv.weight.speech" in names


def test_routing_plan_is_a_stable_grouping():
    mods = torch.tensor([[1, 0], [2, 1], [0, 0]])
    plan = build_routing_plan(mods, 3)
    flat = mods.reshape(-1)
    assert plan.counts == (3, 2, 1)
    assert plan.perm.tolist() == [1, 4, 5, 0, 3, 2]  # stable: sequence order inside each modality
    assert torch.equal(flat[plan.perm], torch.tensor([0, 0, 0, 1, 1, 2]))
    x = torch.randn(6, 4)
    assert torch.equal(plan.to_sequence(plan.to_grouped(x)), x)
    sp = build_routing_plan(mods, 3, parallel=ParallelContext.of(VirtualGroup(4, 1), True))
    assert sp.sp_sizes == (2, 2, 1, 1) and sp.local_counts == (1, 1, 0)
    assert build_routing_plan(torch.zeros(3, 2, dtype=torch.long), 3).perm is None  # already grouped
    assert build_routing_plan(mods, 3, routed=False).perm is None


@pytest.mark.parametrize("bad,words", [
    (torch.tensor([[0, 3]]), ["modality id 3", "position (0, 1)", "3 entries"]),
    (torch.tensor([[-1, 0]]), ["modality id -1"]),
    (torch.tensor([[0.0, 1.0]]), ["must be integers"]),
])
def test_routing_plan_rejects_bad_ids(bad, words):
    with pytest.raises(ValueError) as e:
        build_routing_plan(bad, 3)
    for w in words:
        assert w in str(e.value)


def test_megatron_linear_contract():
    """Submodules take Megatron's keywords and return (output, bias); skip_bias_add hands the bias back."""
    from mot_parallel.model.grouped_linear import GroupedColumnParallelLinear, GroupedRowParallelLinear
    s = settings()
    col = GroupedColumnParallelLinear(32, 48, s.modalities, config=s, init_method=torch.nn.init.zeros_, bias=True,
                                      skip_bias_add=True, gather_output=False, is_expert=False,
                                      tp_comm_buffer_name="fc1", tp_group=None)
    row = GroupedRowParallelLinear(48, 32, s.modalities, config=s, init_method=torch.nn.init.zeros_, bias=False,
                                   skip_bias_add=False, input_is_parallel=True, is_expert=False, tp_group=None)
    plan = build_routing_plan(_mods(0, 3), 3)
    y, bias = col(torch.randn(S * B, 32), plan)
    assert y.shape == (S * B, 48) and bias is col.bias and torch.count_nonzero(y) == 0
    z, none = row(y, plan)
    assert z.shape == (S * B, 32) and none is None
    for bad in ({"is_expert": True}, {"stride": 2}, {"tp_group": object()}, {"no_such_keyword": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):  # refused by name, never silently ignored
            GroupedColumnParallelLinear(32, 48, s.modalities, config=s, **bad)
    with pytest.raises(ValueError, match="gather_output"):
        GroupedColumnParallelLinear(32, 48, s.modalities, config=s, gather_output=True)


def test_settings_from_config():
    from mot_parallel.config import load_config
    from mot_parallel.model import ModelSettings as MS
    cfg = load_config(None, ["model.untie=[ffn]", "model.modalities=[text,image,speech]", "parallel.tensor_parallel=2",
                             "parallel.sequence_parallel=true", "model.num_kv_heads=2"])
    s = MS.from_config(cfg)
    assert s.groups("ffn") == 3 and s.groups("attention") == 1 and s.routed
    assert s.num_kv_heads == 2 and s.ffn_hidden_size == 768 and s.padded_vocab(2) % 256 == 0
    assert not MS.from_config(load_config(None, ["model.untie=[]"])).routed
