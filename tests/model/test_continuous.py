"""The Transfusion setting: continuous images (patch vectors) trained by diffusion next to discrete text.

- the whole model (patch projection + timestep embedding in, noise prediction out, the per-patch MSE, the
  LM loss on discrete targets only, attention causal over the sequence but bidirectional inside an image,
  document masking, a condition-dropped image seeing only from its BOI marker) equals an independent
  token-by-token reference (tests/mot_reference.py), loss sums and every gradient within 1e-5 relative,
  for full MoT, FFN-only and dense;
- the attention mask equals the rule written out pairwise;
- the per-modality target counts the packer computes from metadata (the loss normaliser) equal what the
  micro-batches actually train on, on random corpora;
- every layout draws the same noise for the same image (seeded by step, document, segment; never rank);
- bad corpora are refused before training, naming the file: a patch size that does not match the config,
  a modality continuous in the corpus and discrete in the model (and the reverse), NaN/inf values."""
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
from mot_reference import allowed_keys, leaf_copies, reference_transfusion

D = 4  # patch values: 1 channel, 2 x 2 patch
IMAGE = ContinuousSpec("image", channels=1, patch=2, grid=(1, 3))
# two columns of 10 tokens; column 0: [text x3, image x3, text x2 | text x2], column 1: [image x3, text x4 | image x3]
MODS = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 1, 1, 1]]).t()
SEGS = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]]).t()
SPANS = torch.tensor([[-1, -1, -1, 0, 0, 0, -1, -1, -1, -1], [0, 0, 0, -1, -1, -1, -1, 1, 1, 1]]).t()
CONTEXT = torch.tensor([[-1, -1, -1, 2, 2, 2, -1, -1, -1, -1], [-1] * 10]).t()  # column 0's image: dropped caption


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


def _ours(model, s, batch, context):
    tokens, labels, label_mods, patches = batch
    plan = build_routing_plan(MODS, 2, routed=s.routed, segment_ids=SEGS, span_ids=SPANS, context_start=context)
    order = sorted(patches, key=lambda ij: ij[0] * MODS.shape[1] + ij[1])  # flat s-major = grouped order
    x_t = torch.stack([patches[k][0] for k in order])
    t = torch.tensor([patches[k][1] for k in order])
    eps = torch.stack([patches[k][2] for k in order])
    return model(tokens, plan, labels, label_mods, None, [(x_t, t, eps)])


CASES = [dict(), dict(untie=frozenset({"ffn"})), dict(untie=frozenset()),
         dict(norm_placement="post", qk_norm=True, untie_final_norm=True)]


@pytest.mark.parametrize("case", CASES, ids=["mot", "ffn-only", "dense", "post-qknorm-finalnorm"])
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


def test_attention_mask_is_causal_bidirectional_within_images_and_respects_context():
    plan = build_routing_plan(MODS, 2, segment_ids=SEGS, span_ids=SPANS, context_start=CONTEXT)
    dense = plan.attention_mask.dense()
    S, B = MODS.shape
    for j in range(B):
        for i in range(S):
            want = torch.zeros(S, dtype=torch.bool)
            want[allowed_keys(i, j, S, SEGS, SPANS, CONTEXT)] = True
            assert torch.equal(dense[j, 0, i], want), (i, j)
    assert dense[0, 0, 3, 5] and not dense[0, 0, 3, 1]  # an image patch sees the image's later patches, not its caption


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


def _noise_of(table, dp, rank, step_count=3):
    noiser = Noiser(100, 50, 0.2, 7, {1: D})
    settings = LoaderSettings(seq_len=16, micro_batch_size=1, dp_size=dp, dp_rank=rank, grad_accum=4 // dp, seed=5,
                              prefetch=1)
    loader = MoTDataLoader(table, settings, noiser=noiser)
    out = {}
    for _ in range(step_count):
        batch = next(loader)
        for mb in batch.micro_batches:
            flat = (mb.modality_ids == 1).reshape(-1).nonzero().flatten()
            for k, idx in enumerate(flat.tolist()):
                out[(batch.step, mb.micro + 4 // dp * rank, idx)] = mb.continuous[0].eps[k]
    loader.close()
    return out


def test_every_layout_draws_the_same_noise(tmp_path):
    c = _open(_corpus(tmp_path / "c"))
    table = CorpusSet([CorpusPart("c", c, np.arange(c.num_docs))], ["text", "image"], ["image"], ["image"])
    single = _noise_of(table, 1, 0)
    split = {**_noise_of(table, 2, 0), **_noise_of(table, 2, 1)}
    assert single.keys() == split.keys() and len(single) > 10
    assert all(torch.equal(single[k], split[k]) for k in single)


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
from mot_parallel.testing import DistributedTestError, run_distributed  # noqa: E402
from train_utils import TINY, losses, train_body  # noqa: E402

TF = ["model.vocab_size=320", "model.modalities=[text,image]",
      "model.continuous={image: {source: pixels, channels: 3, patch: 4, grid: [6, 6], boi_token: 256, eoi_token: 257}}"]


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
def test_ddim_with_an_oracle_recovers_the_image():
    """With the true noise at every step (an oracle model), DDIM lands on the image it was told about."""
    from mot_parallel.model.diffusion import cosine_alpha_bar, ddim_sample
    ab = cosine_alpha_bar(1000)
    x0 = torch.rand(36, 48) * 2 - 1
    oracle = lambda x, t: (x - float(ab[t]) ** 0.5 * x0) / float(1 - ab[t]) ** 0.5  # noqa: E731
    for clip in (0.0, 1.0):
        out = ddim_sample(oracle, torch.randn(36, 48, generator=torch.Generator().manual_seed(0)), ab, 20, clip)
        assert torch.allclose(out, x0, atol=1e-4), clip


def test_noiser_follows_the_schedule_and_limits_image_first_noise():
    from mot_parallel.model.diffusion import Noiser
    n = Noiser(1000, 500, 0.3, seed=1, patch_dims={1: 4})
    x0 = np.ones((3, 4), np.float32)
    draws = [n(x0, step, 7, 2, image_first=True) for step in range(200)]
    assert max(d.t for d in draws) < 500 and 0.2 < np.mean([d.drop_condition for d in draws]) < 0.4
    d = draws[0]
    a = n.alpha_bar[d.t]
    assert np.allclose(d.x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * d.eps, atol=1e-6)
    again = n(x0, 0, 7, 2, image_first=True)
    assert again.t == d.t and np.array_equal(again.eps, d.eps)          # the image's identity decides
    assert not n(x0, 0, 7, 2, image_first=True, train=False).drop_condition  # evaluation: no dropout


def test_sample_tool_writes_pictures_and_text(tmp_path):
    """tools/sample.py on an (untrained) Transfusion checkpoint: a picture for a caption, text for a prompt."""
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
