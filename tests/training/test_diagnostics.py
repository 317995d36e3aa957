"""Optional training diagnostics (logging.diagnostics; training/diagnostics.py):
- `max_logits` equals a brute-force loop over (query, key) pairs on random inputs: documents, GQA, absent
  modalities (-inf), large values; exact up to float rounding (1e-5 relative);
- through the trainer, layer 0's max logit per (query, key) modality pair at step 1 equals an independent
  per-token computation of q and k (tests/mot_reference.py's pieces) from the initial weights and the step's
  batch (1e-4 relative);
- turning diagnostics on does not change training (identical losses), the per-group gradient norms combine
  into the engine's global norm (1e-5), and every diagnostic is the same under DP=2 with ZeRO 1 and 3,
  TP=2 with SP, and PP=2 (where gradient norms are absent by design) as in one process (1e-4 relative).
"""
import math

import pytest
import torch

from mot_parallel.config import load_config
from mot_parallel.model import ModelSettings
from mot_parallel.model.attention_mask import build_attention_mask
from mot_parallel.testing import run_distributed
from mot_parallel.training.diagnostics import max_logits
from mot_reference import _rms, _rope
from train_utils import TINY, losses, train_body


def _brute(q, k, lo, hi, mods, m):
    s, b, hq, d = q.shape
    rep = hq // k.shape[2]
    out = torch.full((m, m), -math.inf)
    for j in range(b):
        for i in range(s):
            for t in range(s):
                if lo is None and t > i or lo is not None and not (lo[j, i] <= t <= hi[j, i]):
                    continue
                a, c = int(mods[i * b + j]), int(mods[t * b + j])
                for h in range(hq):
                    out[a, c] = max(out[a, c], float(q[i, j, h] @ k[t, j, h // rep]) / math.sqrt(d))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_max_logits_equal_a_brute_force_loop(seed):
    g = torch.Generator().manual_seed(seed)
    s, b, hkv, rep, d, m = 7, 2, 2, (1 if seed % 2 else 2), 4, 3
    scale = 30.0 if seed == 5 else 1.0  # large logits too
    q = torch.randn(s, b, hkv * rep, d, generator=g) * scale
    k = torch.randn(s, b, hkv, d, generator=g) * scale
    mods = torch.randint(0, m - (seed == 3), (s * b,), generator=g)  # seed 3: modality 2 absent
    mask = None
    if seed % 3:
        docs = torch.sort(torch.randint(0, 3, (s, b), generator=g), dim=0).values
        mask = build_attention_mask(docs, kernel="sdpa")
    got = max_logits(q, k, mask, mods, m)
    ref = _brute(q, k, None if mask is None else mask.lo, None if mask is None else mask.hi, mods, m)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert torch.allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-6)
    assert max_logits(q, k, mask, None, 1)[0, 0] == pytest.approx(ref[finite].max().item(), rel=1e-5)


# ------------------------------------------------------------------------------------- through the trainer
DIAG = ["logging.diagnostics=true", "train.steps=3", "model.max_seq_len=32"]


def _first_step_logits_body(overrides):
    from mot_parallel.training import Trainer
    cfg = load_config(None, TINY + overrides)
    t = Trainer(cfg)
    start = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    seen, run = [], t.step_runner.run

    def record_batch(batch):
        if not seen:
            seen.extend((mb.tokens.clone(), mb.modality_ids.clone(), mb.plan.position_ids.clone(),
                         mb.plan.attention_mask.lo.clone(), mb.plan.attention_mask.hi.clone())
                        for mb in batch.micro_batches)
        return run(batch)
    t.step_runner.run = record_batch
    t.train()
    return start, seen, losses(cfg.run.output_dir)[1]


def _layer0_qk(W, s, tokens, mods, positions):
    """Per token: its modality's attention norm, W_qkv and QK-norms, then RoPE at its document position."""
    S, B = tokens.shape
    d, H, KV = s.head_dim, s.num_heads, s.num_kv_heads
    q, k = torch.empty(S, B, H, d), torch.empty(S, B, KV, d)
    name = lambda n, m: f"layers.0.{n}.{s.modalities[m]}"  # noqa: E731  (full MoT: every part untied)
    for i in range(S):
        for j in range(B):
            m = int(mods[i, j])
            x = _rms(W["embedding.word_embeddings.weight"][tokens[i, j]], W[name("attn_norm.weight", m)], s.norm_eps)
            qi, ki, _ = (W[name("self_attention.linear_qkv.weight", m)] @ x).split([H * d, KV * d, KV * d])
            qi = _rms(qi.view(H, d), W[name("self_attention.q_layernorm.weight", m)], s.norm_eps)
            ki = _rms(ki.view(KV, d), W[name("self_attention.k_layernorm.weight", m)], s.norm_eps)
            q[i, j], k[i, j] = _rope(qi, int(positions[i, j]), s.rope_theta), _rope(ki, int(positions[i, j]), s.rope_theta)
    return q, k


def test_logged_max_logits_equal_a_per_token_computation(tmp_path):
    overrides = DIAG + [f"run.output_dir={tmp_path}", "train.steps=1"]
    start, micro_batches, record = run_distributed(_first_step_logits_body, 1, args=(overrides,), timeout=300)[0]
    s = ModelSettings.from_config(load_config(None, TINY + overrides))
    ref = torch.full((3, 3), -math.inf)
    with torch.no_grad():
        for tokens, mods, positions, lo, hi in micro_batches:
            q, k = _layer0_qk(start, s, tokens, mods, positions)
            ref = torch.maximum(ref, _brute(q, k, lo, hi, mods.reshape(-1), 3))
    for a, qa in enumerate(s.modalities):
        for c, kc in enumerate(s.modalities):
            got = record[f"diag/max_logit/layer0/{qa}-{kc}"]
            if math.isinf(ref[a, c]):
                assert got is None, (qa, kc)
            else:
                assert got == pytest.approx(ref[a, c].item(), rel=1e-4), (qa, kc)


def _diag(rec):
    return {k: v for k, v in rec.items() if k.startswith("diag/")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("diag_single")
    return run_distributed(train_body, 1, args=(DIAG + [f"run.output_dir={run}"],), timeout=300)[0]


def test_diagnostics_do_not_change_training_and_add_up(single, tmp_path):
    off = run_distributed(train_body, 1, args=(DIAG[1:] + [f"run.output_dir={tmp_path}"],), timeout=300)[0]
    for step, rec in off.items():
        assert rec["loss"] == single[step]["loss"] and rec["grad_norm"] == single[step]["grad_norm"]
        assert not _diag(rec)
        groups = [single[step][f"diag/grad_norm/{g}"] for g in ("text", "image", "speech", "shared")]
        assert math.sqrt(sum(x * x for x in groups)) == pytest.approx(rec["grad_norm"], rel=1e-5)
        assert all(0 < single[step][f"diag/update/{g}"] < 1 for g in ("text", "image", "shared"))
    assert len(_diag(single[1])) == 4 + 4 + 9 + 2 + 2 * 9  # grad norms, updates, pairs, layers, layer pairs


LAYOUTS = {
    "dp2-zero1": (2, ["parallel.zero_stage=1"]),
    "dp2-zero3": (2, ["parallel.zero_stage=3"]),
    "tp2-sp": (2, ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"]),
    "pp2": (2, ["parallel.pipeline_parallel=2", "parallel.zero_stage=1"]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_diagnostics_equal_across_layouts(name, single, tmp_path):
    world, overrides = LAYOUTS[name]
    got = run_distributed(train_body, world, args=(DIAG + overrides + [f"run.output_dir={tmp_path}"],),
                          timeout=300)[0]
    for step, ref in single.items():
        for key, want in _diag(ref).items():
            have = got[step][key]
            if want is None or (name == "pp2" and key.startswith("diag/grad_norm/")):
                assert have is None, (name, step, key)
            else:
                assert have == pytest.approx(want, rel=1e-4, abs=1e-6), (name, step, key)
