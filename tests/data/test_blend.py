"""Blending, as properties over random blends the project did not design (tests/integration/test_validation.py has the
hand-made cases and the end-to-end runs).

Random blends: 1 to 6 sources of 1 to 20 000 documents (log-uniform), weights log-uniform in 1e-4 .. 1e4,
chunks of 1 to 4096 draws (a source smaller than a chunk, i.e. than a global batch, wraps its epochs many
times within one). Properties, exact unless stated:
- determinism: the same (sizes, weights, seed) give the same order, chunk by chunk, in any access order;
- each source cycles through its documents: every aligned block of n of a source's draws is a permutation
  of its n documents (so none is starved or repeated early);
- shares: each source's share of the draws is within 5 sigma (binomial) + 3 draws of its normalised weight;
- exact resume: a DocumentStream over the blend, stopped at a random point (state through JSON, random
  deferrals on the way), continues with exactly the pieces of an uninterrupted one;
- bounded cost: a source's epoch permutation is drawn once (not once per chunk: a 10M-document source
  cost 0.9 s and 80 MB per chunk before), and the order's memory does not grow with the chunks served;
- weights: 0, negative, non-finite, and weights whose ratio underflows are refused naming the key;
  weights near the float range still normalise.
The default run draws 40 random blends; `--slow` draws 400.
"""
import json
import tracemalloc

import numpy as np
import pytest

from mot_parallel.config.blend_spec import parse_blend
from mot_parallel.data.blend import BlendOrder
from mot_parallel.data.corpus import SegmentTable
from mot_parallel.data.stream import DocumentStream

MODS = ["text", "image"]


def random_blend(rng):
    s = int(rng.integers(1, 7))
    sizes = [max(1, int(x)) for x in np.exp(rng.uniform(0, np.log(20000), s))]
    weights = np.exp(rng.uniform(np.log(1e-4), np.log(1e4), s)).tolist()
    return sizes, weights, int(rng.choice([1, 3, 64, 4096])), int(rng.integers(0, 2 ** 32))


def check_blend(sizes, weights, chunk, seed, draws=20000):
    order = BlendOrder(sizes, weights, seed, chunk=chunk)
    chunks = max(1, min(300, draws // chunk))  # chunks of 1 draw: 300 of them (each costs a generator)
    docs = np.concatenate([order(e) for e in range(chunks)])
    again = BlendOrder(sizes, weights, seed, chunk=chunk)
    for e in sorted({0, chunks - 1, chunks // 2}, reverse=True):  # random (here: backward) access
        assert np.array_equal(again(e), order(e)), (sizes, weights, chunk, seed, e)
    offsets = np.cumsum([0] + list(sizes))
    assert docs.min() >= 0 and docs.max() < offsets[-1]
    source = np.searchsorted(offsets, docs, side="right") - 1
    p = np.asarray(weights) / np.sum(weights)
    share = np.bincount(source, minlength=len(sizes)) / len(docs)
    sigma = np.sqrt(p * (1 - p) / len(docs))
    assert np.all(np.abs(share - p) <= 5 * sigma + 3 / len(docs)), (sizes, p, share)  # + 3 draws: tiny expectations
    for s, n in enumerate(sizes):
        local = docs[source == s] - offsets[s]
        blocks = local[: len(local) // n * n].reshape(-1, n)
        assert all(len(np.unique(b)) == n for b in blocks), (s, n)


def test_random_blends_hold_their_properties():
    rng = np.random.default_rng(2024)
    for _ in range(40):
        check_blend(*random_blend(rng))


@pytest.mark.slow
def test_random_blends_hold_their_properties_many():
    rng = np.random.default_rng(77)
    for _ in range(400):
        check_blend(*random_blend(rng))


@pytest.mark.parametrize("sizes,weights", [
    ([1, 100_000], [1e4, 1e-4]),          # a one-document source drawn nearly always
    ([100_000, 1], [1e4, 1e-4]),          # ... and nearly never (2e-8 of the draws)
    ([1, 1, 1, 1, 1, 1], [1] * 6),        # six one-document sources
    ([3, 7], [0.5, 0.5]),                  # both far smaller than a chunk
])
def test_extreme_blends(sizes, weights):
    check_blend(sizes, weights, 4096, seed=5, draws=40960)


# ------------------------------------------------------------------------------------------ exact resume
def _table(rng, sizes):
    """A CorpusSet-like table: the sources' documents back to back, random text/image segments."""
    docs = []
    for n in sizes:
        for _ in range(n):
            docs.append([(MODS[int(rng.random() < 0.3)], int(rng.integers(1, 40))) for _ in range(rng.integers(1, 4))])
    return SegmentTable.from_profiles(docs, MODS, atomic=["image"])


def _stream(table, sizes, weights, chunk, seed):
    return DocumentStream(table, 16, seed, BlendOrder(sizes, weights, seed, chunk=chunk))


@pytest.mark.parametrize("case", range(12))
def test_blend_stream_resumes_exactly_at_any_point(case):
    rng = np.random.default_rng(case)
    sizes = [int(rng.integers(1, 40)) for _ in range(int(rng.integers(1, 5)))]
    weights = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), len(sizes))).tolist()
    chunk, seed = int(rng.choice([1, 5, 64])), int(rng.integers(0, 1000))
    table = _table(rng, sizes)
    total, stop = 400, int(rng.integers(0, 400))
    defer = rng.random(total) < 0.2  # the packer hands some pieces back

    def run(stream, steps):
        out = []
        for i in steps:
            held = stream.take()
            out.append(held)
            if defer[i]:
                stream.defer([held])
        return out
    full = _stream(table, sizes, weights, chunk, seed)
    served = run(full, range(stop))
    state = json.loads(json.dumps(full.state_dict()))  # checkpoints keep it as JSON
    served += run(full, range(stop, total))
    resumed = _stream(table, sizes, weights, chunk, seed)
    resumed.load_state_dict(state)
    assert run(resumed, range(stop, total)) == served[stop:], (case, stop)


# ------------------------------------------------------------------------------------------ bounded cost
def test_a_source_permutation_is_drawn_once_per_source_epoch(monkeypatch):
    seeds = []
    real = np.random.default_rng

    def counting(seed=None):
        seeds.append(tuple(seed) if isinstance(seed, (list, tuple)) else seed)
        return real(seed)
    monkeypatch.setattr(np.random, "default_rng", counting)
    order = BlendOrder([200_000, 30], [0.5, 0.5], seed=9, chunk=256)
    for e in range(40):  # 5 120 of the big source's draws: all in its epoch 0
        order(e)
    assert seeds.count((9, 0, 0)) == 1, "the 200k-document source's epoch-0 permutation was drawn repeatedly"


def test_the_order_state_does_not_grow_with_the_chunks_served():
    order = BlendOrder([3, 5, 11], [1.0, 2.0, 3.0], seed=4, chunk=8)
    for e in range(300):
        order(e)
    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        for e in range(300, 1800):
            order(e)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 1 500 more chunks"


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("value", ["0 a 1 b", "1 a 0 b", "0.0 a", "-0 a 2 b", "inf a 1 b", "1e-300 a 1e300 b"])
def test_weights_that_would_starve_or_break_a_source_are_refused_by_name(value):
    with pytest.raises(ValueError, match="data.path"):
        parse_blend(value, "data.path")


@pytest.mark.parametrize("value,want", [("1e308 a 1e308 b", [0.5, 0.5]), ("1e-310 a 3e-310 b", [0.25, 0.75]),
                                        ("1e-4 a 1e4 b", [1e-8, 1.0])])
def test_weights_near_the_float_range_normalise(value, want):
    got = [w for w, _ in parse_blend(value, "data.path")]
    assert np.allclose(got, want, rtol=1e-6, atol=0) and abs(sum(got) - 1) < 1e-12, got


# ------------------------------------------------------------------------------------------ O(1) resume
def _served(stream, n):
    return [stream.take() for _ in range(n)]


def _blend_stream(sizes, weights, chunk, seed=11):
    rng = np.random.default_rng(seed)
    return _stream(_table(rng, sizes), sizes, weights, chunk, seed)


def test_a_resume_restores_the_blend_cursor_instead_of_recounting_every_chunk(monkeypatch):
    """Thousands of chunks in, a resumed stream draws only the chunk it is in (the cursor travels in the
    state), and serves exactly what the uninterrupted stream serves."""
    sizes, weights = [7, 3, 12], [0.5, 0.2, 0.3]
    full = _blend_stream(sizes, weights, chunk=2)
    _served(full, 6000)
    state = json.loads(json.dumps(full.state_dict()))
    assert state["order_cursor"]["chunk"] == full.epoch and sum(state["order_cursor"]["draws"]) == 2 * full.epoch
    want = _served(full, 300)
    resumed = _blend_stream(sizes, weights, chunk=2)
    drawn = []
    real = BlendOrder._sources
    monkeypatch.setattr(BlendOrder, "_sources", lambda self, e: drawn.append(e) or real(self, e))
    resumed.load_state_dict(state)
    assert _served(resumed, 300) == want
    assert min(drawn) == state["epoch"], f"recounted from chunk {min(drawn)}"


@pytest.mark.parametrize("cursor", ["absent", "another blend", "inconsistent", "garbled"])
def test_a_state_without_a_usable_cursor_still_resumes_exactly_by_recounting(cursor):
    """A checkpoint written before cursors were stored (no cursor), a cursor of another blend, or one that
    does not add up resumes as before: by recounting the chunks (the position is the same either way)."""
    sizes, weights = [5, 9], [0.3, 0.7]
    full = _blend_stream(sizes, weights, chunk=4)
    _served(full, 500)
    state = json.loads(json.dumps(full.state_dict()))
    if cursor == "absent":
        del state["order_cursor"]
    elif cursor == "another blend":  # its draws differ: were they used, the documents would too
        state["order_cursor"] = BlendOrder(sizes, [0.9, 0.1], 11, chunk=4).cursor(state["epoch"])
    elif cursor == "inconsistent":
        state["order_cursor"]["draws"][0] += 1
    else:
        state["order_cursor"] = {"chunk": "x"}
    want = _served(full, 200)
    resumed = _blend_stream(sizes, weights, chunk=4)
    resumed.load_state_dict(state)
    assert _served(resumed, 200) == want
