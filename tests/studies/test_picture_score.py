"""The picture demo's world and the scorer of sampled pictures (corpus_building/demo_pictures.py, studies/picture_score.py).

- the 24 stamps (8 shapes x 3 sizes) are pairwise distinct;
- every (count, size, place) fits its half: the shapes never touch, so a render's components are its shapes;
- ground-truth renders score 1 on every check (colour, half, shape, count, size), over random captions and
  the tightest ones (four large shapes in each half);
- adversarial pictures score only on what they show: a canvas or a half filled with the caption's colour
  scores colour (and half for the half) but never shape, count or size; a few ink pixels score nothing; the
  right shapes in another colour or half fail exactly that check;
- the held-out captions (and the four-large ones the world cannot draw) never occur in the training
  documents (token sequences checked), and every word they use does;
- the accuracy table's standard errors and its mismatched-caption baseline."""
import numpy as np
import pytest

from mot_parallel.corpus_building import demo_pictures as dp
from mot_parallel.corpus_building.demo_shapes import SHAPES, SIZES, STAMPS
from mot_parallel.studies.picture_score import CHECKS, _crop, _overlap, components, score_picture, score_pictures


def test_stamps_are_pairwise_distinct():
    keys = sorted(STAMPS)
    overlaps = sorted(((_overlap(_crop(STAMPS[a]), _crop(STAMPS[b])), a, b) for i, a in enumerate(keys)
                       for b in keys[i + 1:]), reverse=True)
    assert overlaps[0][0] <= 0.85 and {overlaps[0][1], overlaps[0][2]} == {(0, 5), (1, 5)}  # small circle, square
    assert overlaps[1][0] < 0.81, overlaps[:3]


@pytest.mark.parametrize("place", range(4))
def test_the_tightest_captions_fit_their_half_with_separate_shapes(place):
    """Every count of every size the world shows fits its half, shapes apart; four large do not fit, and the
    world's captions never ask for them."""
    rng = np.random.default_rng(place)
    assert [dp.capacity(side) for side in SIZES] == [10, 8, 3]
    for count, size in ((3, 0), (3, 1), (2, 2)):
        for _ in range(5):
            img = dp.render((count, size, 0, 3, place), rng)
            ink = np.abs(img - dp.BACKGROUND).max(-1) > 0.2
            assert len(components(ink)) == count + 1
            (r0, r1), (c0, c1) = dp.region(place)
            assert ink[r0:r1, c0:c1].sum() == ink.sum()
    assert not any(a[0] == 3 and a[1] == 2 for a in dp.ALL_CAPTIONS) and len(dp.ALL_CAPTIONS) == 3072 - 256


def test_ground_truth_renders_score_one_on_every_check():
    rng = np.random.default_rng(0)
    captions = [dp.ALL_CAPTIONS[i] for i in rng.permutation(len(dp.ALL_CAPTIONS))[:60]]
    captions += [(2 + k % 2, 2 - k % 2, colour, shape, place)   # three large, four medium
                 for k, (colour, shape, place) in enumerate(zip(range(8), range(8), [0, 1, 2, 3] * 2))]
    for attrs in captions:
        assert all(score_picture(dp.render(attrs, rng), attrs).values()), attrs
    table = score_pictures([dp.render(a, rng) for a in captions[:20]], captions[:20])
    assert all(table[k]["accuracy"] == 1.0 and table[k]["stderr"] == 0.0 for k in CHECKS)


def test_adversarial_pictures_score_only_on_what_they_show():
    rng = np.random.default_rng(1)
    attrs = (0, 2, 1, 3, 2)   # one large green star at the top
    fill = np.tile(dp.PALETTE[1], (dp.SIDE, dp.SIDE, 1))
    assert score_picture(fill, attrs) == {"colour": True, "half": False, "shape": False, "count": False, "size": False}
    half = np.tile(dp.BACKGROUND, (dp.SIDE, dp.SIDE, 1))
    half[:dp.SIDE // 2] = dp.PALETTE[1]
    assert score_picture(half, attrs) == {"colour": True, "half": True, "shape": False, "count": False, "size": False}
    specks = np.tile(dp.BACKGROUND, (dp.SIDE, dp.SIDE, 1))
    specks[3, 3] = specks[30, 20] = dp.PALETTE[1]
    assert not any(v for k, v in score_picture(specks, attrs).items() if k != "colour")
    blank = np.tile(dp.BACKGROUND, (dp.SIDE, dp.SIDE, 1))
    assert not any(score_picture(blank, attrs).values())
    noise = np.random.default_rng(2).random((dp.SIDE, dp.SIDE, 3))
    assert not score_picture(noise, attrs)["count"] and not score_picture(noise, attrs)["shape"]
    right = dp.render(attrs, rng)
    assert score_picture(right, (0, 2, 4, 3, 2)) == {"colour": False, "half": True, "shape": True, "count": True,
                                                       "size": True}
    assert score_picture(right, (0, 2, 1, 3, 3))["half"] is False
    assert score_picture(right, (1, 0, 1, 0, 2)) == {"colour": True, "half": True, "shape": False, "count": False,
                                                       "size": False}


def test_held_out_captions_never_occur_in_training_documents():
    assert len(dp.HELD_OUT) == len(dp.ALL_CAPTIONS) // 10
    for k, options in enumerate((4, 3, 8, 8, 4)):   # every attribute value is also held out somewhere
        assert {a[k] for a in dp.HELD_OUT} == set(range(options))
    held = {tuple(dp.caption_ids(a)) for a in dp.HELD_OUT}
    held |= {tuple(dp.caption_ids(a)) for a in [(3, 2, c, s, p) for c in range(8) for s in range(8) for p in range(4)]}
    seen = set()
    for doc in dp.documents(400, seed=0, patch=16):
        for tokens, modality in doc:
            if modality == 0:
                t = [int(x) for x in tokens]
                for i in range(len(t) - 10):
                    seen.add(tuple(t[i:i + 11]))
    assert len(seen) > 250 and not seen & held
    words = {w for ids in held for w in ids}
    assert words <= {w for s in seen for w in s}
    sample = dp.held_out_captions(50, seed=3)
    assert all(a in dp.HELD_OUT and ids == dp.caption_ids(a) for ids, a in sample)
    assert dp.held_out_captions(50, seed=3) == sample and len({a for _, a in sample}) == 50


def test_the_table_reports_standard_errors_and_a_mismatched_baseline():
    rng = np.random.default_rng(4)
    attrs = [dp.ALL_CAPTIONS[i] for i in rng.permutation(len(dp.ALL_CAPTIONS))[:8]]
    pictures = [dp.render(a, rng) for a in attrs]
    pictures[0] = np.tile(dp.BACKGROUND, (dp.SIDE, dp.SIDE, 1))   # one blank: 7/8 right on every check
    table = score_pictures(pictures, attrs)
    for k in CHECKS:
        assert table[k]["accuracy"] == 7 / 8
        assert table[k]["stderr"] == pytest.approx(np.sqrt(7 / 8 * 1 / 8 / 8))
        assert table[k]["mismatched"] < 1.0 and table[k]["chance"] > 0
    assert table["shape"]["chance"] == 1 / len(SHAPES) and table["size"]["chance"] == 1 / len(SIZES)
    with pytest.raises(ValueError, match="as many captions as pictures"):
        score_pictures(pictures, attrs[:3])
