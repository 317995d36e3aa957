"""The denoiser probe (studies/denoiser_probe.py, tools/sample.py --probe): clean-picture errors of noised
ground truths under the right caption and under captions with one word changed.

- the changed captions differ from the right one in exactly that word, which becomes another word of its kind;
- an oracle that recovers a picture only from its own caption scores 0 under it and the picture's own energy
  under every changed caption, at every noise level: the gaps are what the caption's word is worth;
- the estimator sees the truth noised to t = fraction x T with the schedule's abar (an estimator that inverts
  the noising with the true noise recovers the truth exactly);
- on a model, the estimates do not depend on how many pictures run per forward."""
import math

import numpy as np
import pytest
import torch

from mot_parallel.corpus_building.demo_corpus import _COLORS, _SHAPES
from mot_parallel.corpus_building.demo_pictures import ALL_CAPTIONS, caption_ids
from mot_parallel.model.diffusion import cosine_alpha_bar
from mot_parallel.studies.denoiser_probe import VARIANTS, probe_denoiser, variant_contexts

BOI = 256


def _attrs(n, seed):
    rng = np.random.default_rng(seed)
    return [ALL_CAPTIONS[i] for i in rng.integers(0, len(ALL_CAPTIONS), n)]


@pytest.mark.parametrize("seed", range(5))
def test_changed_captions_differ_in_exactly_their_word(seed):
    attrs = _attrs(40, seed)
    ctx = variant_contexts(attrs, BOI, seed)
    shape_ids = {caption_ids((0, 0, 0, k, 0))[6] for k in range(len(_SHAPES))}
    colour_ids = {caption_ids((0, 0, k, 0, 0))[5] for k in range(len(_COLORS))}
    for i, a in enumerate(attrs):
        right = ctx["right"][i]
        assert right == caption_ids(a) + [BOI] and ctx["none"][i] == [BOI]
        for variant, pos, kind in (("shape", 6, shape_ids), ("colour", 5, colour_ids)):
            other = ctx[variant][i]
            diff = [k for k, (x, y) in enumerate(zip(right, other)) if x != y]
            assert len(other) == len(right) and diff == [pos] and other[pos] in kind, (variant, a)


def _oracle(attrs, truths):
    """Recovers a picture exactly from its own caption; from any other context, the grey canvas (zeros)."""
    own = {tuple(caption_ids(a) + [BOI]): k for k, a in enumerate(attrs)}

    def estimate(contexts, x_t, t):
        return torch.stack([truths[own[tuple(c)]] if tuple(c) in own else torch.zeros_like(truths[0])
                            for c in contexts])
    return estimate


@pytest.mark.parametrize("seed", range(3))
def test_an_oracle_of_the_caption_shows_the_words_worth(seed):
    attrs = _attrs(6, seed)
    truths = torch.randn(6, 16, 12, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    rows = probe_denoiser(_oracle(attrs, truths), attrs, truths, BOI, cosine_alpha_bar(1000), seed=seed)
    energy = float((truths ** 2).mean())
    assert [r["t"] for r in rows] == [800, 650, 500, 350, 200]
    for r in rows:
        assert r["mse/right"] == 0.0
        assert all(abs(r[f"mse/{v}"] - energy) < 1e-6 for v in VARIANTS[1:])
        assert abs(r["gap/shape"] - energy) < 1e-6 and abs(r["gap/colour"] - energy) < 1e-6


def test_the_estimator_sees_the_truth_noised_to_t():
    """Inverting x_t with the probe's own noise (same generator) recovers the truth: x_t is sqrt(abar) x_0 +
    sqrt(1 - abar) eps at t = round(fraction T)."""
    attrs, ab = _attrs(3, 0), cosine_alpha_bar(100)
    truths = torch.rand(3, 4, 12) * 2 - 1
    seen = []

    def invert(contexts, x_t, t):
        seen.append(t)
        eps = torch.randn(truths.shape, generator=torch.Generator().manual_seed(7 * 100003 + t))
        return (x_t - math.sqrt(1 - ab[t]) * eps) / math.sqrt(ab[t])
    rows = probe_denoiser(invert, attrs, truths, BOI, ab, fractions=(0.9, 0.5, 0.0), seed=7)
    assert sorted(set(seen)) == [0, 50, 90] and all(r[f"mse/{v}"] < 1e-8 for r in rows for v in VARIANTS)
    with pytest.raises(ValueError, match="one picture per caption"):
        probe_denoiser(invert, attrs, truths[:2], BOI, ab)


def test_clean_estimates_do_not_depend_on_the_batch():
    from mot_parallel.generation import clean_estimator
    from mot_parallel.model.model import MoTModel
    from mot_parallel.model.settings import ContinuousSpec
    from tests.model.test_continuous import settings
    spec = ContinuousSpec("image", channels=3, patch=4, grid=(2, 2), source="pixels", boi_token=38)
    model = MoTModel(settings(continuous=(spec,)))
    contexts = [[1, 2, 3, 38], [4, 5, 38], [38], [7, 8, 9, 10, 38], [11, 38]]
    x_t = torch.randn(5, 4, 48, generator=torch.Generator().manual_seed(0))
    whole = clean_estimator(model, batch=5)(contexts, x_t, 30)
    assert whole.shape == (5, 4, 48) and torch.isfinite(whole).all() and whole.abs().max() <= 1.0
    assert torch.allclose(clean_estimator(model, batch=2)(contexts, x_t, 30), whole, atol=1e-5)
