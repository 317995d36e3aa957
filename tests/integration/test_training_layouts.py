"""Layout equivalence: the same model, data and seed trained for 8 steps gives the same per-step loss
(and per-modality losses) under every layout, relative error <= 1e-4 (fp32):
single process; DP=2 with ZeRO 1, 2, 3; DP=2 with activation checkpointing; TP=2 with SP off and on;
PP=2 (ZeRO-1); 4 processes mixing TP=2 + SP with PP=2; and 8 processes in 3-D, TP=2 + SP, PP=2, DP=2 with
ZeRO-1 (test_three_d.py: the same at the demo size, 10 steps, 1e-5). The loss is normalised by the global batch's
loss tokens, so DP=2 reproduces DP=1 with 2 accumulation steps.
The same for the Transfusion setting (continuous images trained by diffusion, on the picture demo): its
input/output projections are replicated over TP (partial gradients under SP), the noise is drawn per image,
never per rank, so every layout trains the same model (with the demo's 2-D positions and v prediction); and
with the U-Net patch encoder (model/unet.py), whose grad norm must match too (1e-3 relative, as the token
layouts'). The default suite trains a representative subset (DEFAULT_LAYOUTS, UNET_DEFAULT); `tests/run.sh --slow` trains every layout."""
import pytest

from mot_parallel.testing import run_distributed
from train_utils import TINY, train_body

LAYOUTS = {
    "dp2-zero1": (2, ["parallel.zero_stage=1"]),
    "dp2-zero2": (2, ["parallel.zero_stage=2"]),
    "dp2-zero3": (2, ["parallel.zero_stage=3"]),
    "dp2-recompute": (2, ["train.activation_checkpointing=true"]),
    "tp2": (2, ["parallel.tensor_parallel=2"]),
    "tp2-sp": (2, ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"]),
    "pp2": (2, ["parallel.pipeline_parallel=2", "parallel.zero_stage=1"]),
    "tp2-sp-pp2": (4, ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
                       "parallel.pipeline_parallel=2", "train.activation_checkpointing=true"]),
    "tp2-sp-pp2-dp2": (8, ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true",  # 3-D, 8 ranks
                           "parallel.pipeline_parallel=2", "parallel.zero_stage=1"]),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    (ref,) = run_distributed(train_body, 1, args=([f"run.output_dir={run}"],), timeout=300)
    assert len(ref) == 8 and ref[8]["loss"] < ref[1]["loss"]
    return ref


# the default suite trains the demo's layout, ZeRO-3, TP with SP, TP+SP+PP with recompute (4 processes) and
# 3-D (8 processes); --slow adds ZeRO-2, recompute alone, TP without SP and PP alone
DEFAULT_LAYOUTS = ("dp2-zero1", "dp2-zero3", "tp2-sp", "tp2-sp-pp2", "tp2-sp-pp2-dp2")


def _slow_unless_default(names, default=DEFAULT_LAYOUTS):
    return [n if n in default else pytest.param(n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _slow_unless_default(LAYOUTS))
def test_layout_matches_single_process(name, reference, tmp_path):
    world, overrides = LAYOUTS[name]
    got = run_distributed(train_body, world, args=(overrides + [f"run.output_dir={tmp_path}"],), timeout=300)[0]
    assert sorted(got) == sorted(reference)
    for step, ref in reference.items():
        for key in ["loss"] + [k for k in ref if k.startswith("loss/")]:
            if ref[key] is None:  # no target tokens of that modality in this step's global batch
                assert got[step][key] is None, (name, step, key)
                continue
            assert abs(got[step][key] - ref[key]) <= 1e-4 * abs(ref[key]), (name, step, key, got[step][key], ref[key])
        assert got[step]["tokens/image"] == ref["tokens/image"]
        assert abs(got[step]["grad_norm"] - ref["grad_norm"]) <= 1e-3 * ref["grad_norm"], (name, step)


IMAGE = "{source: pixels, channels: 3, patch: 8, grid: [4, 4], boi_token: 256, eoi_token: 257"
# the demo's settings: 2-D positions (patch indices count every rank's rows) and v prediction
TRANSFUSION = ["model.vocab_size=320", "model.modalities=[text,image]", "diffusion.prediction=v",
               f"model.continuous={{image: {IMAGE}, position_embedding: sincos2d}}}}"]
TRANSFUSION_LAYOUTS = ["dp2-zero3", "tp2", "tp2-sp", "pp2", "tp2-sp-pp2"]
# the U-Net patch encoder: whole images through convolutions on every TP rank, the stream gathered for the
# up blocks under SP, the timesteps crossing pipeline stages; 4 steps (the first 4 of the linear run's data)
UNET = ["model.vocab_size=320", "model.modalities=[text,image]", "train.steps=4",
        f"model.continuous={{image: {IMAGE}, patch_encoder: unet, unet_channels: 8}}}}"]
UNET_LAYOUTS = ["dp2-zero3", "tp2", "tp2-sp", "pp2", "tp2-sp-pp2"]
UNET_DEFAULT = "tp2-sp-pp2"   # the default suite's instance; the others run with --slow


def _transfusion_reference(tmp_path_factory, overrides, name):
    run = tmp_path_factory.mktemp(name)
    (ref,) = run_distributed(train_body, 1, args=(overrides + [f"run.output_dir={run}"],), timeout=300)
    last = max(ref)
    assert ref[last]["loss/image"] < ref[1]["loss/image"] and ref[1]["tokens/image"] > 0
    _check_flops_axis(ref, overrides)
    return ref


def _check_flops_axis(ref, overrides):
    """flops_total (compare_runs' FLOPs axis) counts the transformer per token and the patch encoder and
    decoder per image token (a U-Net's convolutions are most of an image token's cost at this width), and so do
    each step's logged TFLOP/s (the reference runs one process, without recompute)."""
    from mot_parallel.config import load_config
    from mot_parallel.flops import continuous_flops_per_token, training_flops_per_token
    from mot_parallel.model.settings import ModelSettings
    cfg = load_config(None, TINY + overrides)
    s = ModelSettings.from_config(cfg)
    per_step = training_flops_per_token(s, cfg.model.max_seq_len) * cfg.train.global_batch_size * cfg.model.max_seq_len
    per_image_token = 3 * continuous_flops_per_token(s, s.continuous[0])
    total = 0.0
    for step in sorted(ref):
        total += per_step + per_image_token * ref[step]["tokens/image"]
        assert abs(ref[step]["flops_total"] - total) <= 1e-9 * total, (step, ref[step]["flops_total"], total)
        executed = ref[step]["tflops_per_device"] * 1e12 * ref[step]["step_time_s"]
        want = per_step + per_image_token * ref[step]["tokens/image"]
        assert abs(executed - want) <= 1e-9 * want, (step, executed, want)


@pytest.fixture(scope="module")
def transfusion_reference(tmp_path_factory):
    return _transfusion_reference(tmp_path_factory, TRANSFUSION, "single_tf")


@pytest.fixture(scope="module")
def unet_reference(tmp_path_factory):
    return _transfusion_reference(tmp_path_factory, UNET, "single_unet")


def _matches(reference, overrides, name, tmp_path):
    world, layout = LAYOUTS[name]
    got = run_distributed(train_body, world, args=(overrides + layout + [f"run.output_dir={tmp_path}"],),
                          timeout=300)[0]
    assert sorted(got) == sorted(reference)
    for step, ref in reference.items():
        for key in ("loss", "loss/text", "loss/image"):
            assert abs(got[step][key] - ref[key]) <= 1e-4 * abs(ref[key]), (name, step, key, got[step][key], ref[key])
        assert got[step]["tokens/image"] == ref["tokens/image"]
        assert abs(got[step]["grad_norm"] - ref["grad_norm"]) <= 1e-3 * ref["grad_norm"], (name, step)


@pytest.mark.parametrize("name", _slow_unless_default(TRANSFUSION_LAYOUTS, ("dp2-zero3", "tp2-sp-pp2")))
def test_transfusion_layout_matches_single_process(name, transfusion_reference, tmp_path):
    _matches(transfusion_reference, TRANSFUSION, name, tmp_path)


@pytest.mark.parametrize("name", [n if n == UNET_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in UNET_LAYOUTS])
def test_unet_layout_matches_single_process(name, unet_reference, tmp_path):
    _matches(unet_reference, UNET, name, tmp_path)

