"""The document stream (data/stream.py) as properties over random documents the project did not design.

Random documents: 1 to 6 segments of text or (atomic) image, lengths drawn around the sequence length
(1, seq_len - 1, seq_len, seq_len + 1, 2 seq_len + 3, or uniform up to 3 seq_len), so images longer than a
sequence, adjacent images, documents of exactly seq_len and single tokens all occur; seq_len 1 .. 64.
- cut_points: strictly increasing from 0 to the length, no piece longer than seq_len, no cut inside an
  image that fits in a sequence, and every cut either a full sequence after the previous one or moved back
  to an image start;
- every token served exactly once per epoch while a packer-like consumer defers pieces (they come back
  first) and cuts pieces, handing the tails back: the consumed pieces of each document tile it exactly;
- state_dict round trip (through JSON) at a random point mid-epoch: the resumed stream serves exactly
  what the uninterrupted one does under the same consumer decisions.
The default run draws 300 document sets for cut_points and 200 streams; `--slow` 3 000 and 2 000.
"""
import json

import numpy as np
import pytest

from mot_parallel.data.corpus import SegmentTable
from mot_parallel.data.stream import DocumentStream, Held, Piece, cut_points

MODS = ["text", "image"]


def random_table(rng, seq_len, docs=None):
    out = []
    for _ in range(docs or int(rng.integers(1, 8))):
        segs = []
        for _ in range(int(rng.integers(1, 7))):
            n = int(rng.choice([1, seq_len - 1, seq_len, seq_len + 1, 2 * seq_len + 3,
                                int(rng.integers(1, 3 * seq_len + 2))]))
            segs.append((MODS[int(rng.random() < 0.4)], max(1, n)))
        out.append(segs)
    return SegmentTable.from_profiles(out, MODS, atomic=["image"])


def check_cuts(table, seq_len):
    for d in range(table.num_docs):
        n = int(table.doc_len[d])
        cuts = cut_points(table, d, n, seq_len) if n > seq_len else [0, n]
        assert cuts[0] == 0 and cuts[-1] == n and all(b > a for a, b in zip(cuts, cuts[1:])), cuts
        assert all(b - a <= seq_len for a, b in zip(cuts, cuts[1:])), (cuts, seq_len)
        spans = table.atomic_spans(d, 0, n)
        for a, b in spans:
            if b - a <= seq_len:
                assert not any(a < c < b for c in cuts), (table.segments(d), seq_len, cuts)
        starts = {a for a, _ in spans}
        for prev, c in zip(cuts[:-2], cuts[1:-1]):
            assert c == prev + seq_len or c in starts, (prev, c, cuts, seq_len)


@pytest.mark.parametrize("seq_len", [1, 2, 3, 5, 16, 64])
def test_cut_points_over_random_documents(seq_len):
    rng = np.random.default_rng(seq_len)
    for _ in range(50):
        check_cuts(random_table(rng, seq_len), seq_len)


@pytest.mark.slow
def test_cut_points_over_random_documents_many():
    rng = np.random.default_rng(99)
    for _ in range(3000):
        seq_len = int(rng.choice([1, 2, 3, 5, 16, 64, 100]))
        check_cuts(random_table(rng, seq_len), seq_len)


# ------------------------------------------------------------------------------------------ serving
def consume(stream, rng_actions, steps):
    """A packer-like consumer: per piece taken, keep it, defer it, or keep a head and hand the tail back.
    Returns the pieces kept. `rng_actions[i]` in [0, 1) decides step i (the same decisions on a replay)."""
    kept = []
    for i in steps:
        held = stream.take()
        u, p = rng_actions[i], held.piece
        if u < 0.15:
            if held.deferrals < 3:
                stream.defer([held])
            else:
                kept.append(p)
        elif u < 0.35 and p.length > 1:
            cut = p.start + 1 + int((u - 0.15) / 0.2 * (p.length - 1))
            kept.append(Piece(p.doc, p.start, cut, p.epoch))
            stream.put_back([Held(Piece(p.doc, cut, p.end, p.epoch), held.deferrals)])
        else:
            kept.append(p)
    return kept


def check_epoch_coverage(case):
    rng = np.random.default_rng(case)
    seq_len = int(rng.choice([1, 2, 3, 8, 32]))
    table = random_table(rng, seq_len, int(rng.integers(1, 12)))
    stream = DocumentStream(table, seq_len, int(rng.integers(0, 1000)))
    actions = rng.random(100_000)
    kept, i = [], 0
    while stream.epoch == 0 or any(h.piece.epoch == 0 for h in stream.carry) or \
            any(p.epoch == 0 for p in stream.pending):
        kept += consume(stream, actions, [i])
        i += 1
        assert i < len(actions), "epoch 0 never ends"
    for d in range(table.num_docs):
        spans = sorted((p.start, p.end) for p in kept if p.doc == d and p.epoch == 0)
        ends = [0] + [b for _, b in spans]
        assert [a for a, _ in spans] == ends[:-1] and ends[-1] == table.doc_len[d], (case, d, spans)
        assert all(b - a <= seq_len for a, b in spans)


def test_every_token_is_served_once_per_epoch():
    for case in range(200):
        check_epoch_coverage(case)


@pytest.mark.slow
def test_every_token_is_served_once_per_epoch_many():
    for case in range(1000, 3000):
        check_epoch_coverage(case)


@pytest.mark.parametrize("case", range(10))
def test_state_round_trip_mid_epoch(case):
    rng = np.random.default_rng(500 + case)
    seq_len = int(rng.choice([1, 3, 16]))
    table = random_table(rng, seq_len, int(rng.integers(1, 12)))
    seed, total = int(rng.integers(0, 1000)), 300
    stop, actions = int(rng.integers(0, total)), rng.random(total)
    full = DocumentStream(table, seq_len, seed)
    first = consume(full, actions, range(stop))
    state = json.loads(json.dumps(full.state_dict()))
    rest = consume(full, actions, range(stop, total))
    resumed = DocumentStream(table, seq_len, seed)
    resumed.load_state_dict(state)
    assert consume(resumed, actions, range(stop, total)) == rest, (case, stop)
    assert first or stop == 0
