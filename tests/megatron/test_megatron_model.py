"""The Megatron-Core plug-in on CPU (megatron-core 0.16.1, gloo, use_cpu_initialization):
- MoTGPTModel built from get_mot_layer_spec, on 2 processes with TP=2: per-token losses and every
  parameter gradient equal mot_parallel's own MoTModel with the same weights (fp32, <= 1e-5 relative);
- its sharded_state_dict is layout-independent: the TP=2 shards rebuild exactly the TP=1 checkpoint
  (same per-modality keys and global shapes; fused q/k/v and gate/up saved as separate blocks);
GPU-only (marked gpu, skipped on CPU; Megatron's RNG tracker and recompute need CUDA): Megatron's
activation recompute sees the same routing plan (identical losses and gradients); bf16 on CUDA with
Megatron's CUDA RNG tracker and no host synchronisation inside the MoT layers; a real dist_checkpointing
save/load round trip (Megatron's checkpoint writer synchronises CUDA)."""
import pytest
import torch
import torch.nn.functional as F

from mot_parallel.testing import free_port, run_distributed

pytest.importorskip("megatron.core")

MODS = ("text", "image", "speech")
V, S, B = 128, 16, 2


def _megatron(tp, recompute=False, device=None, sp=False, dtype=torch.float32):
    from megatron.core import parallel_state as ps
    from megatron.core.transformer import TransformerConfig

    from mot_parallel.megatron import MoTGPTModel, MoTOptions, get_mot_layer_spec
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    extra = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1) if recompute else {}
    cfg = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
                            use_cpu_initialization=device is None, normalization="RMSNorm", gated_linear_unit=True,
                            activation_func=F.silu, add_bias_linear=False, tensor_model_parallel_size=tp,
                            sequence_parallel=sp, params_dtype=dtype, bf16=dtype == torch.bfloat16,
                            hidden_dropout=0.0, attention_dropout=0.0, qk_layernorm=True, **extra)
    opts = MoTOptions(modalities=MODS, seed=3)  # QK-norm from qk_layernorm (one source of truth)
    return MoTGPTModel(cfg, get_mot_layer_spec(opts), vocab_size=V, max_sequence_length=S, mot=opts)


def _ours(tp_group, megatron_model):
    """mot_parallel's MoTModel with the Megatron model's weights (same TP shards)."""
    from mot_parallel.distributed.parallel_context import ParallelContext
    from mot_parallel.model import MoTModel
    s = megatron_model.settings.with_(vocab_size=V, vocab_multiple=1)
    ours = MoTModel(s, parallel=ParallelContext.of(tp_group, megatron_model.parallel.sequence_parallel))
    src = dict(megatron_model.named_parameters())
    rename = {"decoder.final_layernorm.weight": "head.final_norm.weight",
              "output_layer.weight": "head.output_layer.weight"}
    with torch.no_grad():
        for name, p in ours.named_parameters():
            key = next(k for k, v in rename.items() if v == name) if name in rename.values() else \
                ("decoder." + name if name.startswith("layers.") else name)
            p.copy_(src[key])
    return ours, {n: ("decoder." + n if n.startswith("layers.") else next(
        (k for k, v in rename.items() if v == n), n)) for n, _ in ours.named_parameters()}


def _batch():
    g = torch.Generator().manual_seed(0)
    ids, mods = torch.randint(0, V, (B, S), generator=g), torch.randint(0, 3, (B, S), generator=g)
    mods[mods == 2] = 0  # speech absent: its copies get zero gradients in both
    return ids, mods


def _equivalence_body(tp, recompute):
    from megatron.core import parallel_state as ps
    mg = _megatron(tp, recompute)
    ids, mods = _batch()
    loss = mg(ids, labels=ids, modality_ids=mods)             # [b, s], sequence order
    (loss * torch.arange(1, S + 1)).sum().backward()           # position-dependent weights: order matters
    ours, names = _ours(ps.get_tensor_model_parallel_group(), mg)
    plan = ours.build_plan(mods.t())
    logits = ours.head(ours.layers[1](ours.layers[0](ours.embedding(ids.t(), plan), plan, ours.rope(plan, ids.device)),
                                      plan, ours.rope(plan, ids.device)), plan)
    from mot_parallel.tensor_parallel import vocab_parallel_cross_entropy
    per_token = vocab_parallel_cross_entropy(logits, plan.group_ids(ids.t()), ours.parallel.tp_group)
    ref = plan.to_sequence(per_token).view(S, B).t()            # [b, s] sequence order
    (ref * torch.arange(1, S + 1)).sum().backward()
    errs = {"loss": ((loss - ref).abs().max() / ref.abs().max()).item()}
    mg_params = dict(mg.named_parameters())
    for n, p in ours.named_parameters():
        g_mg = mg_params[names[n]].grad
        errs["g:" + n] = ((g_mg - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-12)).item()
    zero = [n for n in mg_params if n.endswith(".speech")]
    return errs, all(torch.count_nonzero(mg_params[n].grad) == 0 for n in zero), loss.detach()


@pytest.mark.parametrize("recompute", [False, pytest.param(True, marks=pytest.mark.gpu)], ids=["plain", "recompute"])
def test_megatron_model_equals_mot_parallel(recompute):
    """recompute=True needs CUDA: Megatron's checkpoint saves and restores CUDA RNG states."""
    results = run_distributed(_equivalence_body, 2, args=(2, recompute), timeout=300)
    for errs, zero_ok, _ in results:
        assert zero_ok
        bad = {k: v for k, v in errs.items() if v > 1e-5}
        assert not bad, bad


def _sharded_body(tp):
    """This rank's sharded state dict, factories applied: (key, global shape, global offset, data, main replica)."""
    from megatron.core.dist_checkpointing.mapping import apply_factories
    torch.manual_seed(0)  # Megatron's own CPU init (embedding, output layer) draws from the global RNG
    mg = _megatron(tp)
    sd = mg.sharded_state_dict()
    apply_factories(sd)
    out, stack = [], [sd]
    while stack:
        node = stack.pop()
        for v in (node.values() if isinstance(node, dict) else node):
            if isinstance(v, (dict, list)):
                stack.append(v)
            elif hasattr(v, "global_shape"):
                main = all(r == 0 for r in (v.replica_id if isinstance(v.replica_id, tuple) else (v.replica_id,)))
                data = v.data.detach().clone().view((1,) * v.prepend_axis_num + tuple(v.data.shape))  # layer axis
                out.append((v.key, tuple(v.global_shape), tuple(v.global_offset), data, main))
    full = {n: p.detach().clone() for n, p in mg.named_parameters()} if tp == 1 else None
    return out, full


def _assemble(per_rank):
    tensors = {}
    for shards, _ in per_rank:
        for key, shape, offset, data, main in shards:
            if not main:
                continue
            t = tensors.setdefault(key, torch.full(shape, float("nan")))
            t[tuple(slice(o, o + n) for o, n in zip(offset, data.shape))] = data
    return tensors


def test_sharded_state_dict_is_layout_independent():
    """The TP=2 shards, placed at their global offsets, rebuild exactly the TP=1 checkpoint: same keys,
    same global shapes, same values (fused q/k/v and gate/up saved as separate blocks)."""
    tp2 = _assemble(run_distributed(_sharded_body, 2, args=(2,), timeout=300))
    ((shards1, full1),) = run_distributed(_sharded_body, 1, args=(1,), timeout=300)
    tp1 = _assemble([(shards1, None)])
    assert tp2.keys() == tp1.keys()
    assert any(k.endswith("linear_qkv.weight.image.k") for k in tp1) and any(k.endswith("linear_fc1.weight.text.up") for k in tp1)
    for key in tp1:
        assert not torch.isnan(tp2[key]).any(), f"{key}: shards do not tile the global tensor"
        assert torch.equal(tp2[key], tp1[key]), key
    # and the TP=1 checkpoint holds the model's weights: layers stacked on a leading axis, the fused
    # weights as their blocks in order
    for name, w in full1.items():
        key, layer = name, None
        if name.startswith("decoder.layers."):
            _, _, layer, rest = name.split(".", 3)
            key, layer = "decoder.layers." + rest, int(layer)
        blocks = [b for b in ("q", "k", "v", "gate", "up") if f"{key}.{b}" in tp1]
        got = torch.cat([tp1[f"{key}.{b}"] for b in blocks], dim=1 if layer is not None else 0) if blocks else tp1[key]
        assert torch.equal(got[layer] if layer is not None else got, w), name


def _block_body():
    from megatron.core import parallel_state as ps
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_block import TransformerBlock

    from mot_parallel.megatron import MoTOptions, get_mot_layer_spec
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    cfg = TransformerConfig(num_layers=3, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True,
                            normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
                            add_bias_linear=False)
    block = TransformerBlock(cfg, get_mot_layer_spec(MoTOptions(modalities=("text", "image"))))
    return [(type(layer).__name__, layer.layer_number, sorted(layer.state_dict())[:2]) for layer in block.layers]


def test_spec_is_replicated_by_transformer_block():
    """Megatron's TransformerBlock builds one MoTTransformerLayer per layer from the spec, numbered 1..L."""
    layers = run_distributed(_block_body, world_size=1)[0]
    assert [(name, n) for name, n, _ in layers] == [("MoTTransformerLayer", i) for i in (1, 2, 3)], layers
    assert all(any(".image" in k or ".text" in k for k in keys) for *_, keys in layers), layers


def _gpu_body(path):
    """CUDA: bf16 parameters, Megatron's CUDA RNG tracker, no host sync inside the MoT layers, and a real
    dist_checkpointing save + load round trip (Megatron's writer needs CUDA)."""
    from megatron.core import dist_checkpointing
    from megatron.core import tensor_parallel
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    mg = _megatron(1, device="cuda", dtype=torch.bfloat16).cuda()
    ids, mods = _batch()
    plan = mg.build_plan(mods, device=torch.device("cuda"))
    ids = ids.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = mg(ids, labels=ids, routing_plan=plan)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss.float().mean().backward()
    dist_checkpointing.save(mg.sharded_state_dict(), path)
    before = {n: p.detach().clone() for n, p in mg.named_parameters()}
    with torch.no_grad():
        for p in mg.parameters():
            p.zero_()
    mg.load_state_dict(dist_checkpointing.load(mg.sharded_state_dict(), path))
    same = all(torch.equal(before[n], p) for n, p in mg.named_parameters())
    return loss.float().mean().item(), same


@pytest.mark.gpu
def test_megatron_model_on_gpu(tmp_path):
    ((loss, same),) = run_distributed(_gpu_body, 1, args=(str(tmp_path),), timeout=300)
    assert 3.0 < loss < 7.0 and same


@pytest.mark.slow  # 3 processes importing megatron; the fast instance: test_megatron_model_equals_mot_parallel
def test_megatron_example_tp2_matches_tp1(tmp_path):
    """launch/megatron_example.py (a Megatron training loop with the MoT spec swapped in) trains the same
    loss curve on TP=2 (2 processes) as on TP=1 (1 process): 4 steps, fp32, |diff| <= 1e-4."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    curves = {}
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp), "--master_port",
               str(free_port()), os.path.join(root, "launch", "megatron_example.py"), "--tp", str(tp),
               "--steps", "4", "--out", str(out)]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        curves[tp] = json.loads((out / "losses.json").read_text())
    assert len(curves[1]) == 4 and curves[1][-1] < curves[1][0], curves
    assert max(abs(a - b) for a, b in zip(curves[1], curves[2])) <= 1e-4, curves
