"""GPU-only checks (skipped without CUDA):
- one MoT layer's forward+backward issues no device->host synchronisation (torch's sync debug mode
  turns any sync into an error), i.e. routing never reads counts back from the device;
- the torch._grouped_mm kernel path (bf16, Hopper+) equals the loop-of-GEMMs path, zero-token group included."""
import pytest
import torch

from mot_parallel.distributed import device as dev
from mot_parallel.model import ModelSettings, MoTLayer, build_routing_plan
from mot_parallel.model.grouped_ops import _GroupedMM, grouped_mm
from mot_parallel.model.rope import rope_cos_sin

pytestmark = pytest.mark.gpu


def _settings(**kw):
    return ModelSettings(hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=4, ffn_hidden_size=512,
                         vocab_size=1, padded_vocab_size=1, modalities=("text", "image", "speech"), qk_norm=True, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_has_no_host_sync(dtype):
    device = dev.pick_device(0)
    s = _settings(params_dtype=dtype)
    layer = MoTLayer(s, 0, device=device)
    S, B = 512, 2
    mods = torch.randint(0, 3, (S, B))
    mods[mods == 1] = 0  # a modality with no tokens
    plan = build_routing_plan(mods, 3, device=device, segment_ids=torch.zeros(S, B, dtype=torch.long))
    rope = rope_cos_sin(plan.position_ids, S, B, s.head_dim, s.rope_theta, device)
    x = torch.randn(S, B, 256, device=device, dtype=dtype, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x, plan, rope).float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert layer.mlp.linear_fc1.weight.grad[1].abs().sum().item() == 0


def test_grouped_mm_kernel_matches_loop():
    device = dev.pick_device(0)
    if not dev.has_grouped_mm(device, torch.bfloat16):
        pytest.skip("torch._grouped_mm needs a Hopper-class GPU and a recent torch")
    counts = (300, 0, 212)
    x = torch.randn(512, 256, device=device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(3, 384, 256, device=device, dtype=torch.bfloat16, requires_grad=True)
    offsets = torch.tensor(counts, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(device)
    y_kernel = grouped_mm(x, w, counts, offsets)
    gy = torch.randn_like(y_kernel)
    gx_k, gw_k = torch.autograd.grad(y_kernel, (x, w), gy)
    (y_loop,) = _GroupedMM.apply(x, w, counts, (384,))
    gx_l, gw_l = torch.autograd.grad(y_loop, (x, w), gy)
    for a, b in ((y_kernel, y_loop), (gx_k, gx_l), (gw_k, gw_l)):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()
    assert gw_k[1].abs().sum().item() == 0
