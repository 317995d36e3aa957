"""The Megatron-Core plug-in used from a user's own script, on CPU (gloo, fp32):
- QK-norm has one source of truth (TransformerConfig.qk_layernorm): a contradicting MoTOptions.qk_norm is
  refused, because Megatron's TP reduction of QK-norm grads keys on the config. Shown with Megatron's own
  reduction at TP=2: keyed on a config without qk_layernorm the replicas' QK-norm grads differ (the
  failure); keyed on the model's config they are equal on both ranks and equal TP=1's (<= 1e-5 relative);
- TransformerConfig fields / GPTModel arguments the MoT layer does not compute are refused by name
  (all of them listed in mot_parallel/megatron/settings.py's docstring), a default TransformerConfig too;
- inputs are honoured or refused: attention_mask (Megatron's True = masked) + position_ids give the same
  losses as the equivalent segment_ids (<= 1e-5); decoder_input equals embedding input_ids (<= 1e-6);
  missing modality_ids, inference_context, packed_seq_params: clear errors; every other keyword of
  Megatron's layer and model calls is used, handed on to GPTModel, or refused by name unless it is None;
- the TP size and rank come from the model's own pg_collection, not Megatron's global parallel_state:
  global TP=1 and a 2-rank TP group in pg_collection give TP=2 shards, the TP=2 SP plan and TP=1 losses;
- Megatron's per-layer hidden_dropout argument reaches the MoT layer.
The universal-checkpoint conversion is in tests/megatron/test_megatron_checkpoint.py, ColumnParallelLinear with uneven
SP pieces in tests/tensor_parallel/test_layers_uneven_sp.py."""
import pytest
import torch
import torch.nn.functional as F

from mot_parallel.testing import run_distributed

pytest.importorskip("megatron.core")

MODS = ("text", "image", "speech")
V, S, B, H = 128, 16, 2, 64
TOL = 1e-5


def _config(tp=1, **changes):
    from megatron.core.transformer import TransformerConfig
    kw = dict(num_layers=2, hidden_size=H, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
              use_cpu_initialization=True, normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
              add_bias_linear=False, tensor_model_parallel_size=tp, hidden_dropout=0.0, attention_dropout=0.0,
              qk_layernorm=True)
    kw.update(changes)
    return TransformerConfig(**kw)


def _model(cfg, pg_collection=None, post_process=True, **options):
    from mot_parallel.megatron import MoTGPTModel, MoTOptions, get_mot_layer_spec
    opts = MoTOptions(modalities=MODS, seed=3, **options)
    torch.manual_seed(0)  # Megatron's CPU init of the embedding and output layer: the same full weights at any TP
    extra = {"pg_collection": pg_collection} if pg_collection is not None else {}
    return MoTGPTModel(cfg, get_mot_layer_spec(opts), vocab_size=V, max_sequence_length=S, mot=opts,
                       post_process=post_process, **extra)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, S), generator=g), torch.randint(0, 3, (B, S), generator=g)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


# ----------------------------------------------------------------------------------------- 1. QK-norm


def _qk_norm_body(tp):
    import dataclasses
    import importlib
    from types import SimpleNamespace

    from megatron.core import parallel_state as ps
    fmg = importlib.import_module("megatron.core.distributed.finalize_model_grads")
    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    cfg = _config(tp)
    mg = _model(cfg)
    ids, mods = _batch()
    mg(ids, labels=ids, modality_ids=mods).sum().backward()
    # Megatron's TP reduction of replicated grads, as finalize_model_grads runs it (finalize_model_grads itself
    # needs Megatron's DDP, whose buffers live on CUDA); `ddp_config` is the one DDP attribute it reads
    reduce = getattr(fmg, "_allreduce_non_tensor_model_parallel_grads", None) or fmg._allreduce_layernorm_grads
    mg.ddp_config = SimpleNamespace(use_megatron_fsdp=False)
    qk = {n: p for n, p in mg.named_parameters() if "q_layernorm" in n or "k_layernorm" in n}
    partial = {n: p.grad.clone() for n, p in qk.items()}
    reduce([mg], dataclasses.replace(cfg, qk_layernorm=False), ps.get_tensor_model_parallel_group())  # old mismatch
    mismatched = {n: p.grad.clone() for n, p in qk.items()}
    for n, p in qk.items():
        p.grad.copy_(partial[n])
    reduce([mg], cfg, ps.get_tensor_model_parallel_group())
    return mismatched, {n: p.grad.clone() for n, p in qk.items()}


def test_qk_norm_mismatch_is_refused():
    """MoTOptions.qk_norm contradicting TransformerConfig.qk_layernorm is refused before any weight exists,
    in either direction; unset, the QK-norm follows the config."""
    from mot_parallel.megatron import MoTOptions, settings_from_megatron
    for options_value, config_value in ((True, False), (False, True)):
        with pytest.raises(ValueError, match="qk_layernorm") as err:
            _model(_config(qk_layernorm=config_value), qk_norm=options_value)
        assert "MoTOptions.qk_norm" in str(err.value) and "diverge" in str(err.value)
    for config_value in (False, True):
        assert settings_from_megatron(_config(qk_layernorm=config_value), MoTOptions()).qk_norm is config_value


def test_qk_norm_grads_stay_equal_across_tp_replicas():
    """QK-norm weights are replicated over TP but each rank holds other heads: only the summed grad is right.
    Megatron sums them when the config says qk_layernorm; keyed on a config without it (the mismatch the
    plug-in used to allow) the replicas get different grads and drift apart."""
    results = run_distributed(_qk_norm_body, 2, args=(2,), timeout=300)
    ((_, tp1),) = run_distributed(_qk_norm_body, 1, args=(1,), timeout=300)
    (mis0, red0), (mis1, red1) = results
    assert any(_rel(mis0[n], mis1[n]) > 1e-3 for n in mis0), "the mismatched reduction should leave replicas apart"
    for n in tp1:
        assert _rel(red0[n], red1[n]) <= TOL and _rel(red0[n], tp1[n]) <= TOL, n


# ------------------------------------------------------------------------------- 2. config fields


REFUSED = [
    ("normalization", "LayerNorm"), ("gated_linear_unit", False), ("activation_func", F.gelu),
    ("add_bias_linear", True), ("layernorm_zero_centered_gamma", True),
    ("apply_residual_connection_post_layernorm", True), ("fp32_residual_connection", True), ("softmax_scale", 0.5),
    ("softmax_type", "off-by-one"), ("rotary_interleaved", True), ("window_size", (8, 0)), ("num_moe_experts", 4),
    ("multi_latent_attention", True), ("attention_output_gate", True), ("qk_clip", True),
    ("log_max_attention_logit", True), ("no_rope_freq", 2), ("experimental_attention_variant", "gated_delta_net"),
    ("linear_attention_freq", 2), ("mrope_section", [2, 2]), ("glu_linear_offset", 1.0),
    ("activation_func_clamp_value", 7.0), ("context_parallel_size", 2), ("mtp_num_layers", 1), ("fp8", "e4m3"),
    ("fp4", "e2m1"), ("use_kitchen", True), ("heterogeneous_block_specs", True), ("recompute_granularity", "selective"),
    ("enable_cuda_graph", True), ("external_cuda_graph", True), ("cuda_graph_impl", "local"), ("kv_channels", 32),
    ("quant_recipe", object()),
]


@pytest.mark.parametrize("field,value", REFUSED, ids=[f for f, _ in REFUSED])
def test_unsupported_config_field_is_refused_by_name(field, value):
    """Set after construction (some would need CUDA or Transformer Engine to construct): the check reads the
    config as the layer would, and names the field before any process group or weight is needed."""
    cfg = _config()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=f"TransformerConfig.{field}="):
        _model(cfg)


def test_refused_fields_are_documented():
    """Every field the plug-in refuses is listed in the settings module's docstring."""
    from mot_parallel.megatron import settings
    for name, *_ in settings._REQUIRED:
        assert name in settings.__doc__, name
    assert {f for f, _ in REFUSED} >= {name for name, *_ in settings._REQUIRED}


def test_default_transformer_config_is_refused_with_every_reason():
    """A default TransformerConfig (LayerNorm with bias, GELU, biases) would build RMSNorm/SwiGLU MoT layers
    under a LayerNorm final norm: refused, listing each field to change."""
    from megatron.core.transformer import TransformerConfig
    cfg = TransformerConfig(num_layers=2, hidden_size=H, num_attention_heads=4, use_cpu_initialization=True)
    with pytest.raises(ValueError) as err:
        _model(cfg)
    for field in ("normalization", "gated_linear_unit", "activation_func", "add_bias_linear"):
        assert f"TransformerConfig.{field}=" in str(err.value), field


@pytest.mark.parametrize("kwargs", [{"position_embedding_type": "rope"}, {"rotary_base": 500000},
                                    {"rotary_percent": 0.5}, {"rope_scaling": True},
                                    {"seq_len_interpolation_factor": 2.0}, {"mtp_block_spec": object()}],
                         ids=lambda kw: next(iter(kw)))
def test_unsupported_gpt_model_argument_is_refused(kwargs):
    from mot_parallel.megatron import MoTGPTModel, MoTOptions, get_mot_layer_spec
    opts = MoTOptions(modalities=MODS)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MoTGPTModel(_config(), get_mot_layer_spec(opts), V, S, mot=opts, **kwargs)


def test_call_keywords_are_used_handed_on_or_refused_by_name():
    """Keywords beyond the layer's and the model's named arguments: MoT's own are taken, GPTModel.forward's
    handed on, None accepted as "off"; any other value is refused by name, never silently ignored."""
    from types import SimpleNamespace

    from mot_parallel.megatron.call_keywords import layer_packed_seq_params, model_call
    mask = torch.ones(B, S)
    call = model_call({"modality_ids": mask, "loss_mask": mask, "extra_block_kwargs": None, "a_future_flag": None})
    assert call.modality_ids is mask and call.routing_plan is None
    assert call.gpt_keywords == {"loss_mask": mask, "extra_block_kwargs": None}
    for name in ("inference_context", "inference_params", "packed_seq_params", "a_future_flag"):
        with pytest.raises(ValueError, match=f"does not support {name}"):
            model_call({name: object()})
    packed = SimpleNamespace(routing_plan=object(), rope=None)
    assert layer_packed_seq_params({"packed_seq_params": packed, "padding_mask": mask, "rotary_pos_emb": None,
                                    "inference_context": None}) is packed
    for name in ("attention_mask", "context", "rotary_pos_emb", "rotary_pos_cos_sin", "sequence_len_offset",
                 "attention_bias", "a_future_flag"):
        with pytest.raises(ValueError, match=f"does not support {name}"):
            layer_packed_seq_params({"packed_seq_params": packed, name: mask})
    with pytest.raises(ValueError, match="needs the routing plan"):
        layer_packed_seq_params({"attention_mask": None})


def test_bad_mot_options_are_refused():
    from mot_parallel.megatron import MoTOptions, check_megatron_config
    for bad, key in ((MoTOptions(modalities=("text", "text")), "modalities"),
                     (MoTOptions(untie=frozenset({"mlp"})), "untie"),
                     (MoTOptions(norm_placement="sandwich"), "norm_placement"),
                     (MoTOptions(rope_theta=0.0), "rope_theta")):
        with pytest.raises(ValueError, match=f"MoTOptions.{key}"):
            check_megatron_config(_config(), bad)


# ------------------------------------------------------------------------------------ 3. inputs


def _inputs_body():
    from megatron.core import parallel_state as ps
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    mg = _model(_config())
    ids, mods = _batch()
    seg = torch.zeros(B, S, dtype=torch.long)
    seg[0, 5:], seg[0, 11:], seg[1, 9:] = 1, 2, 1                       # packed documents
    out = {}
    with torch.no_grad():
        out["plain"] = mg(ids, labels=ids, modality_ids=mods)
        out["segments"] = mg(ids, labels=ids, modality_ids=mods, segment_ids=seg)
        # Megatron's own form of the same thing (get_ltor_masks_and_position_ids with resets): True = masked
        same_doc = seg.unsqueeze(2) == seg.unsqueeze(1)
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        mask = ~(same_doc & causal).unsqueeze(1)
        plan = mg.build_plan(mods, seg)
        pos = plan.position_ids.t()
        out["megatron_mask"] = mg(ids, pos, mask, labels=ids, modality_ids=mods)
        out["no_mask_mask"] = mg(ids, None, torch.zeros(1, 1, S, S, dtype=torch.bool), labels=ids, modality_ids=mods)
        out["arange_positions"] = mg(ids, torch.arange(S).expand(B, S), labels=ids, modality_ids=mods)
        out["spread_positions"] = mg(ids, torch.arange(S).expand(B, S) * 2, labels=ids, modality_ids=mods)
        emb = mg.embedding(input_ids=ids, position_ids=None)          # [s, b, h], sequence order
        out["decoder_input"] = mg(None, decoder_input=emb, labels=ids, modality_ids=mods)
    from mot_parallel.megatron import MoTTransformerLayer
    layer = MoTTransformerLayer(_config(), layer_number=1, hidden_dropout=0.25)
    out["layer_hidden_dropout"] = layer.settings.hidden_dropout
    errors = {}
    for name, call in (("modality_ids", lambda: mg(ids, labels=ids)),
                       ("shape", lambda: mg(ids, labels=ids, modality_ids=mods[:, :-1])),
                       ("inference_context", lambda: mg(ids, modality_ids=mods, inference_context=object())),
                       ("packed_seq_params", lambda: mg(ids, modality_ids=mods, packed_seq_params=object())),
                       ("attention_mask", lambda: mg(ids, None, torch.zeros(B, 1, S, S), modality_ids=mods))):
        try:
            call()
            errors[name] = None
        except (ValueError, TypeError) as e:
            errors[name] = (type(e).__name__, str(e))
    return out, errors


def test_inputs_are_honoured_or_refused():
    ((out, errors),) = run_distributed(_inputs_body, 1, timeout=300)
    assert _rel(out["segments"], out["plain"]) > 1e-3                   # documents matter
    assert _rel(out["megatron_mask"], out["segments"]) <= TOL         # attention_mask + position_ids honoured
    assert _rel(out["no_mask_mask"], out["plain"]) <= TOL             # attention stays causal
    assert _rel(out["arange_positions"], out["plain"]) <= TOL
    assert _rel(out["spread_positions"], out["plain"]) > 1e-4          # position_ids reach RoPE
    assert _rel(out["decoder_input"], out["plain"]) <= 1e-6           # precomputed embeddings, grouped
    assert out["layer_hidden_dropout"] == 0.25                          # Megatron's per-layer override
    kind, msg = errors["modality_ids"]                                  # was: 'NoneType' object has no attribute 't'
    assert kind == "ValueError" and "modality_ids=[b, s]" in msg and "routing_plan" in msg
    for name in ("shape", "inference_context", "packed_seq_params", "attention_mask"):
        assert errors[name] is not None and errors[name][0] == "ValueError", (name, errors[name])


# ------------------------------------------------------------------------- 6. the model's own TP group


def _own_group_body(tp_in_pg, sp):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection
    ps.initialize_model_parallel(tensor_model_parallel_size=1)          # Megatron's global TP: 1
    pg = ProcessGroupCollection.use_mpu_process_groups()
    tp_group = dist.new_group(list(range(tp_in_pg)))                    # the model's own TP group
    pg.tp = tp_group
    # on CPU Megatron builds no final norm under SP (torch's norms refuse it): a stage without the head
    mg = _model(_config(tp_in_pg, sequence_parallel=sp), pg_collection=pg, post_process=not sp)
    ids, mods = _batch()
    plan = mg.build_plan(mods)
    shapes = {n: tuple(p.shape) for n, p in mg.named_parameters() if "linear_qkv" in n or "word_embeddings" in n}
    if sp:  # Megatron's SP forward needs CUDA; what is checked before it runs is tested here
        try:
            mg(ids[:, :-1], modality_ids=mods[:, :-1])
            odd = None
        except ValueError as e:
            odd = str(e)
        return plan.sp_sizes, plan.local_counts, mg.parallel.sequence_parallel, shapes, odd
    with torch.no_grad():
        logits = mg(ids, modality_ids=mods)                              # [b, s, V/tp]
        parts = [torch.empty_like(logits) for _ in range(tp_in_pg)]
        dist.all_gather(parts, logits.contiguous(), group=tp_group)
        losses = mg(ids, labels=ids, modality_ids=mods)
    return plan.sp_sizes, plan.local_counts, mg.parallel.sequence_parallel, shapes, (torch.cat(parts, -1), losses)


def test_tp_group_comes_from_the_models_pg_collection():
    """Global parallel_state says TP=1; the model is given a 2-rank TP group. Its layers shard for TP=2,
    its plan is TP=2's (SP sizes and this rank's per-modality counts), and it computes TP=1's logits and
    losses (the loss on the model's group: Megatron's unfused cross-entropy would use the global one)."""
    from mot_parallel.model.routing import sp_shard
    ids, mods = _batch()
    counts = [int((mods == m).sum()) for m in range(3)]
    sp_results = run_distributed(_own_group_body, 2, args=(2, True), timeout=300)
    for rank, (sizes, local, sp, shapes, odd) in enumerate(sp_results):
        assert sp and sizes == (S * B // 2, S * B // 2)
        assert odd and "sequence length 15 is not divisible by the tensor-parallel size 2" in odd
        assert local == sp_shard(S * B, counts, 2, rank)[1]
        assert shapes["embedding.word_embeddings.weight"] == (V // 2, H)
        assert shapes["decoder.layers.0.self_attention.linear_qkv.weight.text"] == ((4 + 2 * 2) * 16 // 2, H)
    tp2 = run_distributed(_own_group_body, 2, args=(2, False), timeout=300)
    ((*_, tp1),) = run_distributed(_own_group_body, 1, args=(1, False), timeout=300)
    for *_, (logits, losses) in tp2:
        assert _rel(logits, tp1[0]) <= TOL and _rel(losses, tp1[1]) <= TOL
