"""The Transfusion setting: continuous images (patch vectors) trained by diffusion next to discrete text.

- the whole model (patch projection + timestep embedding in, noise prediction out, the per-patch MSE, the
  LM loss on discrete targets only, attention causal over the sequence but bidirectional inside an image,
  document masking, a condition-dropped image seeing only from its BOI marker) equals an independent
  token-by-token reference (tests/mot_reference.py), loss sums and every gradient within 1e-5 relative,
  for full MoT, FFN-only and dense; with the U-Net patch encoder too (images assembled pixel by pixel from
  their patches in the reference, two images in one column), and with the 2-D position embedding (written
  out element by element in the reference) on either encoder;
- the attention mask equals the rule written out pairwise;
- the per-modality target counts the packer computes from metadata (the loss normaliser) equal what the
  micro-batches actually train on, on random corpora;
- every layout draws the same noise for the same image (seeded by step, document, segment; never rank);
- under TP + SP a rank whose shard holds no image trains the same gradients as one process (no hang), for
  the linear and the U-Net patch encoder and with 2-D positions (whose patch indices count all ranks' rows);
- the U-Net's FLOPs, parameters and dry-run shapes are counted; pictures sampled together equal pictures
  sampled alone;
- bad corpora are refused before training, naming the file: a patch size that does not match the config,
  a modality continuous in the corpus and discrete in the model (and the reverse), NaN/inf values."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from mot_parallel.data import DataError, LoaderSettings, MoTDataLoader
from mot_parallel.data.continuous_store import ContinuousWriter, patches_path
from mot_parallel.data.corpus import Corpus
from mot_parallel.data.corpus_set import CorpusPart, CorpusSet
from mot_parallel.model import ModelSettings, MoTModel, build_routing_plan
from mot_parallel.model.diffusion import Noiser
from mot_parallel.model.settings import ContinuousSpec
from mot_parallel.testing import run_distributed
from mot_reference import allowed_keys, leaf_copies, reference_transfusion

D = 4  # patch values: 1 channel, 2 x 2 patch
IMAGE = ContinuousSpec("image", channels=1, patch=2, grid=(1, 3))
# two columns of 10 tokens; column 0: [text x2, image x3, text x3 | text x2], column 1: [image x3, text x4 | image x3]
# (the images at positions 2-4 and 0-2 overlap in time: their patches interleave in the flat s-major order)
MODS = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 1, 1, 1]]).t()
SEGS = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]]).t()
SPANS = torch.tensor([[-1, -1, 0, 0, 0, -1, -1, -1, -1, -1], [0, 0, 0, -1, -1, -1, -1, 1, 1, 1]]).t()
CONTEXT = torch.tensor([[-1, -1, 1, 1, 1, -1, -1, -1, -1, -1], [-1] * 10]).t()  # column 0's image: dropped caption


def settings(**kw):
    base = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=48, vocab_size=40,
                vocab_multiple=8, modalities=("text", "image"), seed=11, continuous=(IMAGE,),
                diffusion_timesteps=100, diffusion_loss_weight=5.0)
    base.update(kw)
    return ModelSettings(**base)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    S, B = MODS.shape
    tokens = torch.randint(0, 40, (S, B), generator=g)
    labels = torch.full((S, B), -100)
    label_mods = torch.zeros(S, B, dtype=torch.long)
    for j in range(B):  # next token of the same document, when both are text
        for i in range(S - 1):
            if SEGS[i, j] == SEGS[i + 1, j] and MODS[i, j] == 0 and MODS[i + 1, j] == 0:
                labels[i, j], label_mods[i, j] = tokens[i + 1, j], 0
    patches = {(i, j): (torch.randn(D, generator=g), int(torch.randint(0, 100, (1,), generator=g)),
                        torch.randn(D, generator=g))
               for i in range(S) for j in range(B) if MODS[i, j] == 1}
    return tokens, labels, label_mods, patches


def _ours(model, s, batch, context, plan=None):
    tokens, labels, label_mods, patches = batch
    plan = plan or build_routing_plan(MODS, 2, routed=s.routed, segment_ids=SEGS, span_ids=SPANS, context_start=context)
    order = sorted(patches, key=lambda ij: ij[0] * MODS.shape[1] + ij[1])  # flat s-major = grouped order
    x_t = torch.stack([patches[k][0] for k in order])
    t = torch.tensor([patches[k][1] for k in order])
    eps = torch.stack([patches[k][2] for k in order])
    return model(tokens, plan, labels, label_mods, None, [(x_t, t, eps)])


UNET = ContinuousSpec("image", channels=1, patch=2, grid=(1, 3), patch_encoder="unet", unet_channels=16)
PLACED = replace(IMAGE, position_embedding="sincos2d")
CASES = [dict(), dict(untie=frozenset({"ffn"})), dict(untie=frozenset()),
         dict(norm_placement="post", qk_norm=True, untie_final_norm=True), dict(continuous=(UNET,)),
         dict(continuous=(PLACED,)), dict(continuous=(replace(UNET, position_embedding="sincos2d"),))]


@pytest.mark.parametrize("case", CASES, ids=["mot", "ffn-only", "dense", "post-qknorm-finalnorm", "unet-mot",
                                             "positions-mot", "unet-positions-mot"])
@pytest.mark.parametrize("dropped", [False, True], ids=["conditioned", "condition-dropped"])
def test_model_matches_a_token_by_token_reference(case, dropped):
    s = settings(**case)
    model = MoTModel(s)
    with torch.no_grad():  # non-trivial biases and norms, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    W = leaf_copies(model)
    batch = _batch()
    context = CONTEXT if dropped else None
    out = _ours(model, s, batch, context)
    tokens, labels, label_mods, patches = batch
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 0, 1], [0, 1, 2, 3, 4, 5, 6, 0, 1, 2]]).t()
    ref_sum, ref_count = reference_transfusion(W, s, tokens, MODS, labels, label_mods, patches, positions, SEGS,
                                               SPANS, context)
    assert torch.equal(out.token_count, ref_count) and ref_count.tolist() == [float((labels != -100).sum()), 9.0]
    assert torch.allclose(out.loss_sum, ref_sum, rtol=1e-5, atol=1e-6), (out.loss_sum, ref_sum)
    w = torch.tensor([1.0, 2.0])
    (out.loss_sum * w).sum().backward()
    (ref_sum * w).sum().backward()
    for name, p in model.named_parameters():
        ref = W[name].grad
        scale = ref.abs().max().clamp(min=1e-6)
        assert ((p.grad - ref).abs().max() / scale) < 1e-5, name


def _tp_sp_body(encoder):
    """TP=2 + SP with the TP gradient sum in backward hooks (DeepSpeed ZeRO's route): this batch's 20 grouped
    tokens split 10/10, so rank 0 holds only text and rank 1 every patch."""
    from mot_parallel.config import ParallelLayout
    from mot_parallel.distributed import ParallelTopology
    from mot_parallel.tensor_parallel import register_tp_grad_hooks, tp_partial_grad_params
    from mot_parallel.tensor_parallel.layout import gather_full
    spec = {"unet": UNET, "linear": IMAGE, "positions": PLACED}[encoder]
    topo = ParallelTopology.build(ParallelLayout(tp=2))
    from mot_parallel.distributed.parallel_context import ParallelContext
    model = MoTModel(settings(continuous=(spec,)), parallel=ParallelContext.of(topo.tp_group, True))
    register_tp_grad_hooks(tp_partial_grad_params(model), topo.tp_group)
    ref = MoTModel(settings(continuous=(spec,), vocab_multiple=16))
    losses = []
    for m in (model, ref):
        plan = m.build_plan(MODS, SEGS, span_ids=SPANS, context_start=CONTEXT)
        out = _ours(m, m.settings, _batch(), CONTEXT, plan)
        (out.loss_sum * torch.tensor([1.0, 2.0])).sum().backward()
        losses.append(out.loss_sum.detach())
        if m is model:
            assert plan.sp_sizes == (10, 10) and plan.local_counts[1] == 9 * topo.tp_rank
    worst = float((losses[0] - losses[1]).abs().max() / losses[1].abs().max())
    refs = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g, r = gather_full(p.grad, p, topo.tp_group), refs[name].grad
        worst = max(worst, float((g - r).abs().max() / r.abs().max().clamp(min=1e-6)))
    return worst


# the U-Net under SP is also test_training_layouts' default instance
@pytest.mark.parametrize("encoder", ["linear", "positions", pytest.param("unet", marks=pytest.mark.slow)])
def test_tp_sp_with_every_image_in_one_shard_matches_one_process(encoder):
    """A TP rank whose sequence-parallel shard holds no image still runs the image path (on nothing): its
    hook-summed gradients of the replicated image weights meet the other rank's in the same order (it used
    to skip the path and hang), and loss sums and every gradient equal one process's within 1e-5."""
    for worst in run_distributed(_tp_sp_body, 2, args=(encoder,), timeout=120):
        assert worst < 1e-5


def test_attention_mask_is_causal_bidirectional_within_images_and_respects_context():
    plan = build_routing_plan(MODS, 2, segment_ids=SEGS, span_ids=SPANS, context_start=CONTEXT)
    dense = plan.attention_mask.dense()
    S, B = MODS.shape
    for j in range(B):
        for i in range(S):
            want = torch.zeros(S, dtype=torch.bool)
            want[allowed_keys(i, j, S, SEGS, SPANS, CONTEXT)] = True
            assert torch.equal(dense[j, 0, i], want), (i, j)
    assert dense[0, 0, 2, 4] and not dense[0, 0, 2, 0]  # an image patch sees the image's later patches, not its caption


# ------------------------------------------------------------------------------------------------ data
def _corpus(path, n_docs=60, seed=0, nan=False, dim=D):
    rng = np.random.default_rng(seed)
    w = ContinuousWriter(str(path), np.uint16, {1: ("image", {"patch_dim": dim, "channels": 1, "patch": 2,
                                                               "grid": [1, 3], "source": "pixels"})})
    for d in range(n_docs):
        text = (rng.integers(0, 40, int(rng.integers(1, 12))), 0)
        image = (rng.standard_normal((3, dim)).astype(np.float32), 1)
        kind = d % 3
        w.add_document([text, image, (rng.integers(0, 40, 2), 0)] if kind == 0 else
                       [image, text] if kind == 1 else [text])
    w.close({"modalities": ["text", "image"], "vocab_size": 40})
    if nan:
        values = np.memmap(patches_path(str(path), "image"), mode="r+", dtype=np.float16)
        values[17] = np.nan
        values.flush()
    return str(path)


def _open(prefix, continuous=None):
    return Corpus(prefix, ["text", "image"], 40, atomic=["image"], continuous={"image": D} if continuous is None
                  else continuous)


@pytest.mark.parametrize("seed", range(4))
def test_target_counts_equal_what_the_micro_batches_train_on(tmp_path, seed):
    c = _open(_corpus(tmp_path / "c", seed=seed))
    table = CorpusSet([CorpusPart("c", c, np.arange(c.num_docs))], ["text", "image"], ["image"], ["image"])
    noiser = Noiser(100, 50, 0.1, seed, {1: D})
    settings = LoaderSettings(seq_len=16, micro_batch_size=2, dp_size=1, dp_rank=0, grad_accum=2, seed=seed, prefetch=1)
    loader = MoTDataLoader(table, settings, noiser=noiser)
    for _ in range(5):
        batch = next(loader)
        lm = sum(torch.bincount(mb.label_modalities[mb.labels != -100], minlength=2) for mb in batch.micro_batches)
        images = sum(len(mb.continuous[0].x_t) for mb in batch.micro_batches)
        assert batch.global_label_counts.tolist() == [float(lm[0]), float(images)]
        for mb in batch.micro_batches:
            assert len(mb.continuous[0].x_t) == int((mb.modality_ids == 1).sum())
            assert not ((mb.modality_ids == 1) & (mb.labels != -100)).any()  # patches predict no token
    loader.close()


def _noise_of(table, dp, rank, step_count=3, logit_normal=None):
    noiser = Noiser(100, 50, 0.2, 7, {1: D}, logit_normal=logit_normal)
    settings = LoaderSettings(seq_len=16, micro_batch_size=1, dp_size=dp, dp_rank=rank, grad_accum=4 // dp, seed=5,
                              prefetch=1)
    loader = MoTDataLoader(table, settings, noiser=noiser)
    out = {}
    for _ in range(step_count):
        batch = next(loader)
        for mb in batch.micro_batches:
            flat = (mb.modality_ids == 1).reshape(-1).nonzero().flatten()
            for k, idx in enumerate(flat.tolist()):
                ins = mb.continuous[0]
                out[(batch.step, mb.micro + 4 // dp * rank, idx)] = torch.cat([ins.target[k], ins.t[k:k + 1].float()])
    loader.close()
    return out


@pytest.mark.parametrize("logit_normal", [None, (1.0, 1.0)], ids=["uniform", "logit_normal"])
def test_every_layout_draws_the_same_noise(tmp_path, logit_normal):
    """Each patch's noise and its image's timestep are the same whichever data-parallel rank reads it."""
    c = _open(_corpus(tmp_path / "c"))
    table = CorpusSet([CorpusPart("c", c, np.arange(c.num_docs))], ["text", "image"], ["image"], ["image"])
    single = _noise_of(table, 1, 0, logit_normal=logit_normal)
    split = {**_noise_of(table, 2, 0, logit_normal=logit_normal), **_noise_of(table, 2, 1, logit_normal=logit_normal)}
    assert single.keys() == split.keys() and len(single) > 10
    assert all(torch.equal(single[k], split[k]) for k in single)
    assert len({float(v[-1]) for v in single.values()}) > 2     # the timesteps vary: the check compares them


def test_bad_corpora_are_refused_by_name(tmp_path):
    prefix = _corpus(tmp_path / "c")
    with pytest.raises(DataError, match=r"c.mot.json: image patches have 4 values, but model.continuous.image"):
        _open(prefix, continuous={"image": 12})
    # the same vector size, another layout: 4 values as 4 channels x 1^2 instead of the encoded 1 x 2^2
    sidecar = {"patch_dim": D, "channels": 1, "patch": 2, "grid": [1, 3], "source": "pixels"}
    _open(prefix, continuous={"image": sidecar})
    with pytest.raises(DataError, match=r"image was encoded with channels=1.*model.continuous.image.channels is 4"):
        _open(prefix, continuous={"image": dict(sidecar, channels=4, patch=1)})
    with pytest.raises(DataError, match=r"image was encoded with grid=\[1, 3\].*grid is \[3, 1\]"):
        _open(prefix, continuous={"image": dict(sidecar, grid=[3, 1])})
    with pytest.raises(DataError, match=r"image was encoded with source='pixels'.*source is 'latents'"):
        _open(prefix, continuous={"image": dict(sidecar, source="latents")})
    with pytest.raises(DataError, match="image is continuous .* in this corpus but discrete in the model"):
        _open(prefix, continuous={})
    from mot_parallel.data import IndexedWriter
    with IndexedWriter(str(tmp_path / "tokens"), np.uint16) as w:
        w.add_document([(np.arange(5), 0), (np.arange(9), 1)])
        w.close({"modalities": ["text", "image"], "vocab_size": 40})
    with pytest.raises(DataError, match="image is discrete .* but model.continuous declares it continuous"):
        _open(str(tmp_path / "tokens"))
    with pytest.raises(DataError, match=r"c2.image.patches: row 4 \(document .*\) holds NaN or inf"):
        _open(_corpus(tmp_path / "c2", nan=True))


# ------------------------------------------------------------------------------------------------ training
from mot_parallel.testing import DistributedTestError  # noqa: E402
from train_utils import TINY, losses, train_body  # noqa: E402

TF = ["model.vocab_size=320", "model.modalities=[text,image]",
      "model.continuous={image: {source: pixels, channels: 3, patch: 8, grid: [4, 4], boi_token: 256, eoi_token: 257}}"]


def test_kill_and_resume_is_exact(tmp_path):
    full = run_distributed(train_body, 2, args=(TF + [f"run.output_dir={tmp_path / 'full'}"],), timeout=300)[0]
    run = TF + [f"run.output_dir={tmp_path / 'killed'}", "checkpoint.interval=3"]
    with pytest.raises(DistributedTestError, match="exit code 17"):
        run_distributed(train_body, 2, args=(run,), timeout=300, env={"MOT_FAULT": "kill_after_step:5"})
    resumed = run_distributed(train_body, 2, args=(run,), timeout=300)[0]
    for step in range(1, 9):
        for key in ("loss", "loss/text", "loss/image", "grad_norm"):
            assert resumed[step][key] == full[step][key], (step, key)


def _export_at_2(overrides, universal):
    import torch.distributed as dist
    from mot_parallel.config import load_config
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + TF + ["train.steps=4"] + overrides)
    trainer = Trainer(cfg, on_step_end=lambda step: trainer.export_universal(universal) if step == 2 else None)
    trainer.train()
    dist.barrier()
    return losses(cfg.run.output_dir) if dist.get_rank() == 0 else None


def test_a_transfusion_checkpoint_reshards_and_loads_for_inference(tmp_path):
    """TP=2 + SP writes a universal checkpoint mid-run; PP=2 resumes it (steps 3-4 equal within 1e-4, as any
    two layouts); load_pretrained reads it and predicts noise for an image's patches."""
    u = str(tmp_path / "u")
    ref = run_distributed(_export_at_2, 2, args=(["parallel.tensor_parallel=2", "parallel.sequence_parallel=true",
                                                  f"run.output_dir={tmp_path / 'a'}"], u), timeout=300)[0]
    got = run_distributed(train_body, 2, args=(TF + ["train.steps=4", "parallel.pipeline_parallel=2",
                                                     f"checkpoint.resume={u}", f"run.output_dir={tmp_path / 'b'}"],),
                          timeout=300)[0]
    assert sorted(got) == [3, 4]
    for step in (3, 4):
        for key in ("loss/text", "loss/image"):
            assert abs(got[step][key] - ref[step][key]) <= 1e-4 * ref[step][key], (step, key)
    import mot_parallel
    model = mot_parallel.load_pretrained(u)
    names = dict(model.model.named_parameters())
    assert "embedding.continuous.proj.image.weight" in names and "head.continuous.proj.image.weight" in names


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_with_an_oracle_recovers_the_image(prediction):
    """With the true noise (or the true v) at every step (an oracle model), DDIM lands on the image it was
    told about, with and without clipping the clean estimate."""
    from mot_parallel.model.diffusion import cosine_alpha_bar, ddim_sample
    ab = cosine_alpha_bar(1000)
    x0 = torch.rand(36, 48) * 2 - 1

    def oracle(x, t):
        a = float(ab[t])
        eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        return eps if prediction == "epsilon" else a ** 0.5 * eps - (1 - a) ** 0.5 * x0
    for clip in (0.0, 1.0):
        out = ddim_sample(oracle, torch.randn(36, 48, generator=torch.Generator().manual_seed(0)), ab, 20, clip,
                          prediction)
        assert torch.allclose(out, x0, atol=1e-4), clip


def test_a_v_prediction_gives_the_clean_image_without_dividing_by_the_signal():
    """At t = T - 1 (abar ~ 1e-9) an eps prediction off by 1e-3 puts x_0 off by ~30 (unclipped), a v prediction
    off by the same puts it off by 1e-3: why diffusion.prediction=v exists (model/diffusion.py)."""
    from mot_parallel.model.diffusion import clean_and_noise, cosine_alpha_bar
    a = float(cosine_alpha_bar(1000)[-1])
    x0, eps = torch.rand(8, 12) * 2 - 1, torch.randn(8, 12, generator=torch.Generator().manual_seed(3))
    x_t = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a ** 0.5 * eps - (1 - a) ** 0.5 * x0
    x0_eps, _ = clean_and_noise(x_t, eps + 1e-3, a, "epsilon")
    x0_v, eps_v = clean_and_noise(x_t, v + 1e-3, a, "v")
    assert (x0_eps - x0).abs().max() > 10 and (x0_v - x0).abs().max() < 2e-3
    assert torch.allclose(eps_v, eps, atol=2e-3)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_noiser_follows_the_schedule_and_limits_image_first_noise(prediction):
    from mot_parallel.model.diffusion import Noiser
    n = Noiser(1000, 500, 0.3, seed=1, patch_dims={1: 4}, prediction=prediction)
    x0 = np.ones((3, 4), np.float32)
    draws = [n(x0, step, 7, 2, image_first=True) for step in range(200)]
    assert max(d.t for d in draws) < 500 and 0.2 < np.mean([d.drop_condition for d in draws]) < 0.4
    d = draws[0]
    a = n.alpha_bar[d.t]
    eps = (d.x_t - np.sqrt(a) * x0) / np.sqrt(1 - a)
    want = eps if prediction == "epsilon" else np.sqrt(a) * eps - np.sqrt(1 - a) * x0
    assert np.allclose(d.target, want, atol=1e-5)
    again = n(x0, 0, 7, 2, image_first=True)
    assert again.t == d.t and np.array_equal(again.target, d.target)          # the image's identity decides
    assert not n(x0, 0, 7, 2, image_first=True, train=False).drop_condition  # evaluation: no dropout


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.0, 1.0), (-0.5, 0.3), (3.0, 2.0)])
def test_logit_normal_timesteps_follow_their_distribution_and_the_cap(mean, std):
    """diffusion.timestep_sampling=logit_normal: t/T = sigmoid(mean + std z), inside [0, T) (and below the
    image-first cap), its median at T sigmoid(mean) and its quartiles where the logit-normal puts them, with the
    draw still decided by the image's identity; uniform draws are unchanged by the option's existence."""
    from mot_parallel.model.diffusion import Noiser
    expit = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    T = 1000
    n = Noiser(T, 500, 0.0, seed=3, patch_dims={1: 4}, prediction="v", logit_normal=(mean, std))
    x0 = np.zeros((2, 4), np.float32)
    ts = np.array([n(x0, step, doc, 0, image_first=False).t for step in range(40) for doc in range(50)])
    assert ts.min() >= 0 and ts.max() < T
    for q in (0.25, 0.5, 0.75):   # 2000 draws: a quantile's standard error is < 0.02 of T here
        want = T * expit(mean + std * {0.25: -0.6745, 0.5: 0.0, 0.75: 0.6745}[q])
        assert abs(np.quantile(ts, q) - want) < 0.03 * T, (q, np.quantile(ts, q), want)
    capped = [n(x0, step, 1, 0, image_first=True).t for step in range(300)]
    assert max(capped) < 500
    assert n(x0, 5, 9, 1, image_first=False).t == n(x0, 5, 9, 1, image_first=False).t
    uniform = Noiser(T, 500, 0.0, seed=3, patch_dims={1: 4}, prediction="v")
    g = np.random.default_rng([3, 0x6469666675, 5, 9, 1])
    assert uniform(x0, 5, 9, 1, image_first=False).t == int(g.integers(0, T))


@pytest.mark.parametrize("mean,std,want", [(-1e300, 1.0, 0), (-800.0, 1.0, 0), (800.0, 1.0, 999),
                                           (1e300, 1.0, 999), (0.0, 1e300, None)])
def test_logit_normal_timesteps_survive_extreme_settings(mean, std, want):
    """Any finite mean and std the config accepts gives a timestep in [0, T), never an overflow: the extremes
    pin t to the ends (an enormous std to one end or the other)."""
    from mot_parallel.model.diffusion import Noiser
    n = Noiser(1000, 500, 0.0, seed=3, patch_dims={1: 4}, prediction="v", logit_normal=(mean, std))
    ts = {n(np.zeros((1, 4), np.float32), step, 0, 0, image_first=False).t for step in range(20)}
    assert ts <= {0, 999} if want is None else ts == {want}, ts


def test_sample_tool_writes_pictures_and_text(tmp_path, capsys):
    """tools/sample.py on an (untrained) Transfusion checkpoint: a picture for a caption, text for a prompt, the
    --score table (held-out captions; each check's accuracy, standard error, chance, mismatched baseline) and the
    --probe rows (a clean-picture error per noise level)."""
    import subprocess
    import sys
    from mot_parallel.config import load_config
    from mot_parallel.convert.universal import write_universal
    cfg = load_config(None, TINY + TF)
    s = ModelSettings.from_config(cfg)
    model = MoTModel(s)
    write_universal(str(tmp_path / "u"), cfg, model.named_parameters(),
                    {"step": 0, "has_optimizer": False, "vocab_rows": s.padded_vocab(1), "vocab_size": s.vocab_size},
                    {"step": 0})
    tool = [sys.executable, "tools/sample.py", "--checkpoint", str(tmp_path / "u"), "--steps", "2"]
    out = subprocess.run(tool + ["--caption", "the picture shows one small red star at the top .", "--out",
                                 str(tmp_path / "p.png"), "--prompt", "the picture", "--tokens", "3"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "p.png").stat().st_size > 0 and len(out.stdout.splitlines()[0].split()) == 3
    import importlib.util
    import json
    spec = importlib.util.spec_from_file_location("sample_tool", "tools/sample.py")
    sample_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample_tool)
    sample_tool.main(tool[2:] + ["--score", "3", "--batch", "2", "--json", "--out", str(tmp_path / "grid.png")])
    res = json.loads(capsys.readouterr().out)
    assert res["samples"] == 3 and res["captions"] == "held-out" and (tmp_path / "grid.png").stat().st_size > 0
    assert set(res["checks"]) == {"colour", "half", "shape", "count", "size"}
    assert all(set(r) == {"accuracy", "stderr", "chance", "mismatched"} for r in res["checks"].values())
    sample_tool.main(tool[2:] + ["--probe", "3", "--batch", "2", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert res["pictures"] == 3 and [r["t"] for r in res["rows"]] == [800, 650, 500, 350, 200]
    assert all(np.isfinite(r["mse/right"]) and r["mse/right"] > 0 for r in res["rows"])


@pytest.mark.parametrize("encoder", ["linear", pytest.param("unet", marks=pytest.mark.slow)])
def test_pictures_sampled_together_equal_pictures_sampled_alone(encoder):
    """generate_images (every picture's guided passes as columns of one forward, one plan) gives each picture
    what generate_image gives it alone, within float tolerance."""
    from mot_parallel.generation import generate_image, generate_images
    spec = ContinuousSpec("image", channels=3, patch=4, grid=(2, 2), source="pixels", boi_token=38,
                          patch_encoder=encoder, unet_channels=8)
    model = MoTModel(settings(continuous=(spec,)))
    captions = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    together = generate_images(model, captions, steps=3, cfg_scale=2.0, seeds=[5, 6, 7])
    for caption, seed, got in zip(captions, [5, 6, 7], together):
        alone = generate_image(model, caption, steps=3, cfg_scale=2.0, seed=seed)
        assert got.shape == (4, 48) and torch.allclose(got, alone, atol=1e-5), (encoder, caption)


def test_unet_images_are_the_corpus_layout():
    """The U-Net's patch rows <-> image conversion is images.patchify's layout (values (row, column, channel))."""
    from mot_parallel.data.images import patchify
    from mot_parallel.model.unet import to_images, to_rows
    imgs = np.random.default_rng(0).standard_normal((2, 3, 8, 12)).astype(np.float32)
    rows = np.concatenate([patchify(i, 4) for i in imgs])
    got = to_images(torch.from_numpy(rows), 3, 4, (2, 3))
    assert torch.equal(got, torch.from_numpy(imgs)) and torch.equal(to_rows(got, 4), torch.from_numpy(rows))


def test_unet_flops_parameters_and_dry_run_are_counted(monkeypatch):
    """flops.py counts the U-Net's convolutions as the convolutions run (2 x multiply-adds, counted at every
    call), its parameters as the model holds them, and the dry run finds every U-Net parameter where the
    settings put it (TP=2 x PP=2)."""
    import torch.nn.functional as F
    from mot_parallel.config import load_config
    from mot_parallel.flops import continuous_flops_per_token, param_counts
    from mot_parallel.model import unet
    from mot_parallel.training.dry_run import check_rank
    counted = []

    def conv2d(x, w, b=None, **kw):
        out = F.conv2d(x, w, b, **kw)
        counted.append(2 * out.numel() * w[0].numel())
        return out

    def conv_transpose2d(x, w, b=None, **kw):
        counted.append(2 * x.numel() * w[0].numel())
        return F.conv_transpose2d(x, w, b, **kw)
    monkeypatch.setattr(unet, "F", type("F", (), dict(conv2d=conv2d, conv_transpose2d=conv_transpose2d, silu=F.silu,
                                                      group_norm=F.group_norm)))
    for patch, grid in ((8, (1, 2)), (10, (1, 1)), (4, (2, 3))):
        args = (unet.UNetShape(3, patch, 16, 32), 0, ("image", False), torch.float32, None)
        down, up = unet.UNetDown(*args), unet.UNetUp(*args, out_std=0.02)
        x, emb = torch.randn(2, 3, grid[0] * patch, grid[1] * patch), torch.randn(2, 32)
        for up_path, net, inp in ((False, down, (x, emb)), (True, up, (torch.randn(2, 32, *grid), emb, x))):
            counted.clear()
            net(*inp)
            assert sum(counted) == 2 * unet.unet_flops(3, patch, 16, 32, grid, up_path), (patch, net)
    monkeypatch.undo()
    unet_flops = unet.unet_flops
    image = "{source: pixels, channels: 3, patch: 8, grid: [4, 4], boi_token: 256, eoi_token: 257"
    cfg = load_config(None, TINY + ["model.vocab_size=320", "model.modalities=[text,image]", "parallel.tensor_parallel=2",
                                    "parallel.pipeline_parallel=2", "parallel.zero_stage=1",
                                    f"model.continuous={{image: {image}, patch_encoder: unet, unet_channels: 8}}}}"])
    s = ModelSettings.from_config(cfg)
    assert param_counts(s)["total"] == sum(p.numel() for p in MoTModel(s, device="meta").parameters())
    spec = s.continuous[0]
    time_mlps = 2 * 2 * (256 * 32 + 32 * 32)  # the down and the up path's timestep MLP, once per image
    paths = unet_flops(3, 8, 8, 32, (4, 4)) + unet_flops(3, 8, 8, 32, (4, 4), up=True)
    assert continuous_flops_per_token(s, spec) == pytest.approx((paths + time_mlps) / 16)
    for rank in range(4):
        report = check_rank(cfg, 4, rank)
        assert not report["problems"] and report["params"] == report["planned_params"], report["problems"]
