"""Balanced packing as a specification: per-modality balance on realistic mixes, at the best split where
atomic pieces (images) forbid perfect balance, termination with bounded memory on any corpus, every
token packed exactly once, determinism, and the balance report tool.

Targets: splittable modalities max/mean <= 1.05 on every step; atomic modalities at the
lower bound of mot_parallel/data/balance.py (exactly, up to float rounding: 1e-9); padding <= 2%; the
carry-over does not grow. Where a corpus makes a target impossible the packer must say so (a
PackingWarning naming the modality or the padding) instead of failing silently.
"""
import json
import os
import signal
import subprocess
import sys
import warnings
from contextlib import contextmanager
from itertools import product

import numpy as np
import pytest

from mot_parallel.data import (DocumentStream, GlobalBatch, PackingWarning, Piece, SegmentTable, balance_bound,
                               batch_stats, pack_balanced, pack_sequential)
from mot_parallel.data.balance import max_load_lower_bound
from mot_parallel.data.packing import ASIDE_LIMIT, POOL_LIMIT, TARGET_PADDING, TARGET_RATIO

POOL_BOUND = POOL_LIMIT + ASIDE_LIMIT  # batch capacities the pool may hold (plus a piece per budget)
from mot_parallel.corpus_building.profiles import heavy_tailed_mix, long_image_mix, skewed_mix

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODS = ["text", "image", "speech"]


@contextmanager
def deadline(seconds):
    """Fail (instead of hanging the suite) when the body runs longer than `seconds`."""
    def expire(*_):
        raise TimeoutError(f"still packing after {seconds} s: the packer does not terminate")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class CountingStream(DocumentStream):
    """A DocumentStream that counts the tokens the packer takes (to check the pool's bound)."""
    taken = 0

    def take(self):
        held = super().take()
        self.taken += held.piece.length
        return held


# ------------------------------------------------------------------------------------------ realistic mixes
def test_balanced_packing_on_skewed_mix():
    """8 DP ranks x 8 micro-batches, seq 4096: balanced max/mean <= 1.05 per modality where naive >= 1.3,
    padding <= 2%, over several consecutive global batches."""
    table = SegmentTable.from_profiles(skewed_mix(12000, seed=0), MODS, atomic=["image"])
    naive, bal = DocumentStream(table, 4096, 1), DocumentStream(table, 4096, 1)
    for _ in range(3):
        sn = batch_stats(pack_sequential(naive, 64, 1, 4096), table)
        sb = batch_stats(pack_balanced(bal, 64, 1, 4096), table)
        assert all(v >= 1.3 for v in sn["max_over_mean"].values()), sn
        assert all(v <= 1.05 for v in sb["max_over_mean"].values()), sb
        assert sb["padding_fraction"] <= 0.02
        assert sb["step_time_ratio"] <= sn["step_time_ratio"]


def test_heavy_tailed_mix_meets_the_targets_on_every_step():
    """DP 8 x 8 micro-batches x 4096 on the heavy-tailed mix (log-normal text up to a sequence, a third
    of documents with one or two captioned 1,024-token images, speech with transcripts), 16 steps:
    text and speech max/mean <= 1.05 on every step, images at the step's bound (1e-9), padding <= 2%.
    (Before: 1.1-1.45 on the first step, speech 2.4 / text 1.7 / image 1.5 worst over 16.)"""
    table = SegmentTable.from_profiles(heavy_tailed_mix(30000, seed=1), MODS, atomic=["image"])
    stream = DocumentStream(table, 4096, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PackingWarning)  # a feasible mix: nothing to report
        for step in range(16):
            s = batch_stats(pack_balanced(stream, 64, 1, 4096), table)
            assert s["max_over_mean"]["text"] <= 1.05 and s["max_over_mean"]["speech"] <= 1.05, (step, s)
            assert s["max_over_mean"]["image"] <= s["bound"]["image"] + 1e-9, (step, s)
            assert s["padding_fraction"] <= 0.02, (step, s)


def test_images_as_long_as_a_sequence_do_not_starve_the_batch():
    """A mix where 43% of image tokens come in images as long as a sequence: those wait until a cell's worth
    is there and then fill one step of their own, instead of filling the carry-over until the pool holds
    nothing else. Every step: padding <= 2%, images at the step's bound, no empty step, carry-over under
    POOL_BOUND; DP 8 x 8 x 4096. (Before: the fill cap put the quota one lump under such an image, three
    steps in 16 were all padding and 30-60% padding was common. Smaller layouts pad more on this mix:
    5.5% worst at 32 x 1024, 7.8% at 16 x 512, against 100% before.)"""
    table = SegmentTable.from_profiles(long_image_mix(20000, seed=7), MODS, atomic=["image"])
    stream = DocumentStream(table, 4096, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PackingWarning)  # text misses 1.05 where a step is all images
        for step in range(24):
            s = batch_stats(pack_balanced(stream, 64, 1, 4096), table)
            assert s["padding_fraction"] <= 0.02, (step, s)
            assert s["max_over_mean"]["image"] <= s["bound"]["image"] + 1e-9, (step, s)
            assert stream.carry_tokens <= POOL_BOUND * 64 * 4096, (step, stream.carry_tokens)


def test_carry_over_does_not_grow():
    """120 steps of the heavy-tailed mix (16 cells x 4096): the carry-over (mostly images left over by
    whole per-cell quotas, ~1/4 batch on average) stays under one global batch, and its mean over the
    last 60 steps is within 0.1 batch of its mean over the first 60."""
    table = SegmentTable.from_profiles(heavy_tailed_mix(20000, seed=2), MODS, atomic=["image"])
    stream = DocumentStream(table, 4096, seed=2)
    carry = []
    for _ in range(120):
        pack_balanced(stream, 16, 1, 4096)
        carry.append(stream.carry_tokens / (16 * 4096))
    assert max(carry) <= 1.0, max(carry)
    assert np.mean(carry[60:]) <= np.mean(carry[:60]) + 0.1, (np.mean(carry[:60]), np.mean(carry[60:]))


def test_plans_are_deterministic_and_resume_exactly():
    """Two streams with the same seed plan identical batches (every rank plans alone); a stream restored
    from a JSON round trip of its state mid-run (carry-over included) plans exactly what the
    uninterrupted one does."""
    table = SegmentTable.from_profiles(heavy_tailed_mix(6000, seed=4), MODS, atomic=["image"])
    a, b = DocumentStream(table, 4096, seed=5), DocumentStream(table, 4096, seed=5)
    for _ in range(3):
        assert pack_balanced(a, 16, 2, 4096).cells == pack_balanced(b, 16, 2, 4096).cells
    assert a.carry, "the check needs a non-empty carry-over"
    resumed = DocumentStream(table, 4096, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(3):
        assert pack_balanced(a, 16, 2, 4096).cells == pack_balanced(resumed, 16, 2, 4096).cells


# ------------------------------------------------------------------------------------------ corpora that hung
def _packs_within(table, steps, n_cells=16, seqs=1, seq_len=4096, seconds=20.0):
    stream = CountingStream(table, seq_len, seed=0)
    batches = []
    with deadline(seconds), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(steps):
            before = stream.taken
            batches.append(pack_balanced(stream, n_cells, seqs, seq_len))
            assert stream.taken - before <= POOL_BOUND * n_cells * seqs * seq_len + 2 * seq_len, "unbounded pool"
    return batches, [w for w in said if issubclass(w.category, PackingWarning)]


@pytest.mark.parametrize("image_first", [False, True], ids=["caption+image", "image+caption"])
def test_every_document_atomic_terminates_and_says_so_once(image_first):
    """Every document holds an image: no splittable piece exists to fill the room. It used to loop forever
    drawing pieces; now it packs the images evenly, pads the rest, and warns once about the padding."""
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(2000):
        pair = [("text", int(rng.integers(5, 40))), ("image", 1024)]
        docs.append(pair[::-1] if image_first else pair)
    table = SegmentTable.from_profiles(docs, MODS, atomic=["image"])
    batches, said = _packs_within(table, steps=6)
    for b in batches:
        s = batch_stats(b, table)
        assert s["max_over_mean"]["image"] <= s["bound"]["image"] + 1e-9
    padding = [w for w in said if w.message.reason == "padding"]
    assert len(padding) == 1 and "no splittable pieces" in str(padding[0].message)


@pytest.mark.parametrize("atomic", [["image"], ["image", "speech"]], ids=["speech-splittable", "speech-atomic"])
def test_rare_modality_terminates_and_is_reported(atomic):
    """A handful of 1-token speech segments among text: a step holding one cannot be balanced (one token
    in one of 16 cells); the packer terminates, keeps the pool bounded and says so once."""
    rng = np.random.default_rng(1)
    docs = [[("text", int(rng.integers(50, 3000)))] for _ in range(600)]
    for i in range(0, 600, 120):
        docs[i] = [("speech", 1)]
    table = SegmentTable.from_profiles(docs, MODS, atomic=atomic)
    batches, said = _packs_within(table, steps=12)
    speech = [batch_stats(b, table) for b in batches if b.cell_vectors(table)[:, 2].sum()]
    assert speech and all(s["max_over_mean"]["speech"] <= s["bound"]["speech"] + 1e-9 for s in speech)
    assert len([w for w in said if w.message.reason == "speech"]) == 1


def test_tiny_corpus_wraps_epochs_within_a_batch():
    """A 3-document corpus (41 tokens) fills 4 cells x 2 x 64 tokens by serving ~12 epochs in one step:
    every (document, epoch) covered exactly once, cells even, padding <= 5% (with 64-token sequences of
    7-24-token documents a few tokens per cell stay padding rather than cutting 1-3-token heads)."""
    docs = [[("text", 10)], [("image", 20), ("text", 4)], [("speech", 7)]]
    table = SegmentTable.from_profiles(docs, MODS, atomic=["image"])
    stream = DocumentStream(table, 64, seed=0)
    placed = []
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PackingWarning)  # 2.3% padding: said, and allowed here
            batch = pack_balanced(stream, 4, 2, 64)
        s = batch_stats(batch, table)
        assert s["padding_fraction"] <= 0.05 and max(s["max_over_mean"].values()) <= TARGET_RATIO, s
        placed += [p for cell in batch.cells for seq in cell for p in seq]
    assert stream.epoch >= 30
    check_coverage(stream, placed)


# ------------------------------------------------------------------------------------------ the bound
def test_bound_is_a_lower_bound_and_tight_on_simple_cases():
    """max_load_lower_bound never exceeds the true optimum (brute force over all lump placements, loose
    tokens water-filled), on random small cases; and equals it on hand-checked ones."""
    assert max_load_lower_bound([1024] * 3, 0, 2) == 2048
    assert max_load_lower_bound([], 1, 64) == 1
    assert max_load_lower_bound([3, 3], 1, 2) == 4
    assert max_load_lower_bound([5], 100, 4) == 27
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 4))
        lumps = rng.integers(1, 9, size=int(rng.integers(0, 6))).tolist()
        loose = int(rng.integers(0, 12))
        total = sum(lumps) + loose
        if not total:
            continue
        best = min(max(max(np.bincount(a, weights=lumps, minlength=k).max(), 0), -(-total // k))
                   for a in product(range(k), repeat=len(lumps))) if lumps else -(-total // k)
        assert max_load_lower_bound(lumps, loose, k) <= best, (lumps, loose, k)


def test_balance_bound_of_a_batch():
    """Three 1,024-token images over two cells: no packer beats 2048 / 1536 for images; 3,000 text
    tokens cut anywhere split evenly (bound 1.0)."""
    table = SegmentTable.from_profiles([[("image", 1024)]] * 3 + [[("text", 3000)]], MODS, atomic=["image"])
    cells = [[[Piece(0, 0, 1024, 0), Piece(1, 0, 1024, 0), Piece(3, 0, 1500, 0)]],
             [[Piece(2, 0, 1024, 0), Piece(3, 1500, 3000, 0)]]]
    bound = balance_bound(GlobalBatch.from_cells(cells, 4096), table)
    assert bound == {"text": 1.0, "image": pytest.approx(2048 / 1536), "speech": 1.0}


# ------------------------------------------------------------------------------------------ property tests
def random_mix(rng):
    """A random corpus and layout: 2-4 modalities, some atomic; random segment lengths from 1 token to
    three sequences; with some probability every document atomic, one modality rare, one document
    longer than a sequence, an atomic segment longer than a sequence, or a corpus smaller than a batch."""
    mods = [f"m{i}" for i in range(int(rng.integers(2, 5)))]
    atomic = [m for m in mods if rng.random() < 0.4]
    seq_len = int(rng.choice([64, 128, 256]))
    n_cells, seqs = int(rng.integers(1, 9)), int(rng.integers(1, 4))
    tiny = rng.random() < 0.2
    n_docs = int(rng.integers(1, 6)) if tiny else int(rng.integers(5, 150))
    weights = rng.random(len(mods)) + 0.05
    if rng.random() < 0.3:
        weights[int(rng.integers(len(mods)))] = 0.002  # a rare modality
    weights /= weights.sum()
    all_atomic = bool(atomic) and rng.random() < 0.25
    docs = []
    for _ in range(n_docs):
        doc = [(mods[int(rng.choice(len(mods), p=weights))],
                int(np.clip(rng.lognormal(np.log(seq_len / 4), 1.2), 1, 3 * seq_len)))
               for _ in range(int(rng.integers(1, 5)))]
        if all_atomic and not any(m in atomic for m, _ in doc):
            doc.insert(int(rng.integers(len(doc) + 1)), (atomic[0], int(rng.integers(1, seq_len + 1))))
        docs.append(doc)
    if rng.random() < 0.3:
        docs.append([(mods[0], int(rng.integers(seq_len + 1, 4 * seq_len)))])
    if atomic and rng.random() < 0.3:
        docs.append([(mods[-1], 5), (atomic[0], int(rng.integers(seq_len + 1, 3 * seq_len)))])
    table = SegmentTable.from_profiles(docs, mods, atomic=atomic)
    return table, n_cells, seqs, seq_len


def _held_pieces(stream):
    return [p for p, _ in stream.carry] + list(stream.pending)


def check_coverage(stream, placed):
    """Every token of every (document, epoch) served so far is packed or held exactly once."""
    table = stream.corpus
    spans = {}
    for p in placed + _held_pieces(stream):
        spans.setdefault((p.doc, p.epoch), []).append((p.start, p.end))
    served = {(int(d), e) for e in range(stream.epoch) for d in stream.order(e)}
    served |= {(int(d), stream.epoch) for d in stream.order(stream.epoch)[:stream.pos]}
    served = {k for k in served if table.doc_len[k[0]] > 0}
    assert set(spans) == served, (set(spans) ^ served)
    for (doc, epoch), got in spans.items():
        got.sort()
        ends = [0] + [b for _, b in got]
        assert [a for a, _ in got] == ends[:-1] and ends[-1] == table.doc_len[doc], (doc, epoch, got)


def check_example(seed, steps=6, mix=None, seconds=10.0):
    """The properties of test_random_mixes on the corpus and layout `mix(rng)` draws (random_mix)."""
    rng = np.random.default_rng(seed)
    table, n_cells, seqs, seq_len = (mix or random_mix)(rng)
    capacity = n_cells * seqs * seq_len
    stream = CountingStream(table, seq_len, seed=seed)
    placed = []
    with deadline(seconds), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for step in range(steps):
            before = stream.taken
            batch = pack_balanced(stream, n_cells, seqs, seq_len)
            assert stream.taken - before <= POOL_BOUND * capacity + 2 * seq_len, "the pool must stay bounded"
            assert stream.carry_tokens <= POOL_BOUND * capacity + 2 * seq_len
            for cell in batch.cells:
                for seq in cell:
                    assert sum(p.length for p in seq) <= seq_len and all(p.length > 0 for p in seq)
                    for p in seq:
                        for a, b in table.atomic_spans(p.doc, p.start, p.end):
                            assert b - a > seq_len or p.start <= a and b <= p.end, ("atomic cut", p, (a, b))
                    placed.extend(seq)
            s = batch_stats(batch, table)
            reported = {w.message.reason for w in said if issubclass(w.category, PackingWarning)}
            for m, ratio in s["max_over_mean"].items():
                assert ratio <= TARGET_RATIO + 1e-9 or m in reported, (seed, step, m, s)
            assert s["padding_fraction"] <= TARGET_PADDING or "padding" in reported, (seed, step, s)
    check_coverage(stream, placed)
    reasons = [w.message.reason for w in said if issubclass(w.category, PackingWarning)]
    assert len(reasons) == len(set(reasons)), f"said more than once: {reasons}"
    assert max((d for _, d in stream.carry), default=0) <= 12, "a piece waits for ever"


@pytest.mark.parametrize("seed", range(40))
def test_random_mixes(seed):
    """On random corpora and layouts (see random_mix): terminates (10 s), the pool and carry-over stay
    within 2 batches, no sequence overflows, no atomic segment is cut (unless longer than a sequence),
    every token of every (document, epoch) is packed or held exactly once, and each modality meets
    max/mean <= 1.05 (padding <= 2%) or the packer has said why not."""
    check_example(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40, 440))
def test_random_mixes_slow(seed):
    check_example(seed, steps=10)


# ------------------------------------------------------------------------------------------ the report tool
def test_balance_report_tool(tmp_path):
    """From length profiles: worst max/mean, bound, distance to it, padding, carry-over and planning
    time per packer; balanced meets the targets where naive is far off; a plot is written."""
    profiles = tmp_path / "p.jsonl"
    with open(profiles, "w") as f:
        for doc in skewed_mix(6000, seed=3):
            f.write(json.dumps({"segments": [[m, n] for m, n in doc]}) + "\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "balance_report.py"), "--docs", str(profiles),
                          "--dp", "8", "--micro-batches", "8", "--seq-len", "4096", "--steps", "3", "--json",
                          "--plot", str(tmp_path / "b.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert set(r["naive"]) == {"max_over_mean", "bound", "over_bound", "padding_fraction", "step_time_ratio",
                               "carry_tokens", "plan_ms"}
    assert max(r["balanced"]["max_over_mean"].values()) <= 1.05 <= 1.3 <= min(r["naive"]["max_over_mean"].values())
    assert r["balanced"]["padding_fraction"] <= 0.02 and os.path.getsize(tmp_path / "b.png") > 1000
    assert r["balanced"]["plan_ms"]["max"] < 1000 and r["steps"] == 3
