"""GPU-only check (skipped without CUDA): one MoT layer's forward+backward issues no device->host
synchronisation (torch's sync debug mode turns any sync into an error), i.e. routing never reads counts
back from the device, in fp32 and bf16, with a zero-token modality."""
import pytest
import torch

from mot_parallel.distributed import device as dev
from mot_parallel.model import ModelSettings, MoTLayer, build_routing_plan
from mot_parallel.model.rope import rope_cos_sin

pytestmark = pytest.mark.gpu


def _settings(**kw):
    return ModelSettings(hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=4, ffn_hidden_size=512,
                         vocab_size=1, vocab_multiple=1, modalities=("text", "image", "speech"), qk_norm=True, **kw)


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
    layer(x, plan, rope).float().sum().backward()  # warm-up: compiles FlexAttention (compiling may sync)
    layer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer(x, plan, rope).float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert layer.mlp.linear_fc1.weight["image"].grad.abs().sum().item() == 0
