"""Data pipeline: the on-disk format (and megatron-core reading it), preprocessing and its validation,
epoch coverage, resume, per-rank shares and the global loss-token counts (balanced packing itself:
test_packing.py)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mot_parallel.data import (Corpus, DataError, DocumentStream, IndexedDataset, IndexedWriter, LoaderSettings,
                               MoTDataLoader, SegmentTable, pack_balanced, pack_sequential)
from mot_parallel.corpus_building.demo_corpus import MODALITIES, VOCAB_SIZE, documents, write_demo_corpus
from mot_parallel.corpus_building.profiles import skewed_mix
from mot_parallel.model import IGNORE_INDEX

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODS = ["text", "image", "speech"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("demo") / "demo")
    write_demo_corpus(prefix, 600, seed=0)
    return prefix


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------------------------------ format
def test_roundtrip_and_megatron_reads_it(demo):
    ds = IndexedDataset(demo)
    docs = list(documents(600, seed=0))
    assert ds.num_docs == 600 and ds.multimodal and ds.meta["modalities"] == list(MODALITIES)
    for d in (0, 17, 599):
        lengths, modes = ds.doc_segments(d)
        assert [len(t) for t, _ in docs[d]] == lengths.tolist() and [m for _, m in docs[d]] == modes.tolist()
        assert np.array_equal(np.asarray(ds.doc_tokens(d)), np.concatenate([t for t, _ in docs[d]]))
    mc = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    theirs = mc.IndexedDataset(demo, multimodal=True)
    assert len(theirs) == len(ds.lengths) and np.array_equal(theirs.document_indices, ds.doc_index)
    seq, mode = theirs[5]
    assert np.array_equal(seq, np.asarray(ds._bin[ds.pointers[5] // 2: ds.pointers[5] // 2 + ds.lengths[5]]))
    assert mode == ds.modes[5]


def test_token_range_corpus(tmp_path):
    """A plain (non-multimodal) corpus: modalities from token-id ranges, derived once and cached."""
    prefix = str(tmp_path / "plain")
    with IndexedWriter(prefix, np.uint16, multimodal=False) as w:
        w.add_document([(np.array([1, 2, 300, 301, 302, 5, 460]), 0)])
        w.add_document([(np.array([400, 401]), 0)])
        w.close()
    c = Corpus(prefix, MODS, 512, token_ranges={"image": [256, 448], "speech": [448, 512]})
    assert c.segments(0)[0].tolist() == [2, 3, 1, 1] and c.segments(0)[1].tolist() == [0, 1, 0, 2]
    assert c.vector(0, 1, 6).tolist() == [2, 3, 0]
    assert glob.glob(prefix + ".mot_runs.*.npz")
    toks, mods = c.read(0, 2, 7)
    assert toks.tolist() == [300, 301, 302, 5, 460] and mods.tolist() == [1, 1, 1, 0, 2]


def test_truncated_bin_is_named(tmp_path, demo):
    for ext in (".bin", ".idx", ".mot.json"):
        with open(demo + ext, "rb") as src, open(str(tmp_path / "t") + ext, "wb") as dst:
            dst.write(src.read())
    size = os.path.getsize(str(tmp_path / "t.bin"))
    with open(str(tmp_path / "t.bin"), "r+b") as f:
        f.truncate(size - 1000)
    with pytest.raises(DataError) as e:
        IndexedDataset(str(tmp_path / "t"))
    msg = str(e.value)
    assert "t.bin" in msg and "truncated" in msg and "first document affected" in msg


# ------------------------------------------------------------------------------------------ preprocessing
def _jsonl(path, docs):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return str(path)


GOOD = {"segments": [{"modality": "text", "tokens": [1, 2, 3]}, {"modality": "image", "tokens": [300, 301]}]}


@pytest.mark.parametrize("bad,words", [
    ({"segments": [{"modality": "text", "tokens": [1, 600]}]}, ["in.jsonl:3", "segments[0].tokens[1]=600", "[0, 512)"]),
    ({"segments": [{"modality": "audio", "tokens": [1]}]}, ["in.jsonl:3", "segments[0].modality 'audio'"]),
    ({"segments": []}, ["in.jsonl:3", "empty document"]),
    ([{"modality": "text", "tokens": []}], ["in.jsonl:3", "segments[0].tokens is empty"]),
    ("not json", ["in.jsonl:3", "not valid JSON"]),
])
def test_preprocess_rejects_malformed_input(tmp_path, bad, words):
    src = tmp_path / "in.jsonl"
    _jsonl(src, [GOOD, GOOD])
    with open(src, "a") as f:
        f.write((bad if isinstance(bad, str) else json.dumps(bad)) + "\n")
    out = _tool("preprocess_data.py", "--input", str(src), "--output-prefix", str(tmp_path / "out" / "c"),
                "--modalities", *MODS, "--vocab-size", "512", "--workers", "2", "--chunk", "1")
    assert out.returncode != 0
    for w in words:
        assert w in out.stderr, out.stderr
    assert not glob.glob(str(tmp_path / "out" / "*")), "nothing half-written may be left behind"


def test_preprocess_builds_a_valid_corpus(tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", [GOOD] * 5 + [[{"modality": "speech", "tokens": [450, 451]}]])
    out = _tool("preprocess_data.py", "--input", src, "--output-prefix", str(tmp_path / "c"),
                "--modalities", *MODS, "--vocab-size", "512", "--workers", "2")
    assert out.returncode == 0, out.stderr
    c = Corpus(str(tmp_path / "c"), MODS, 512)
    assert c.num_docs == 6 and c.vector(5, 0, 2).tolist() == [0, 0, 2]
    assert json.load(open(str(tmp_path / "c.mot.json")))["tokens_per_modality"] == {"text": 15, "image": 10,
                                                                                      "speech": 2}
    # the sidecar's names decide: a model listing the modalities in another order reads them remapped
    assert Corpus(str(tmp_path / "c"), ["text", "speech", "image"], 512).vector(5, 0, 2).tolist() == [0, 2, 0]
    with pytest.raises(DataError, match=r"\['image'\] that model.modalities"):
        Corpus(str(tmp_path / "c"), ["text", "speech"], 512)


# ------------------------------------------------------------------------------------------ epoch coverage
# (balance itself: tests/data/test_packing.py)
@pytest.mark.parametrize("balance", [True, False], ids=["balanced", "sequential"])
def test_epoch_coverage_is_exact(balance):
    """Every document of epoch 0 is served exactly once: its pieces tile [0, len) without gap or overlap."""
    docs = skewed_mix(400, seed=5) + [[("text", 30), ("image", 1024), ("text", 9000)]]  # a long mixed doc
    table = SegmentTable.from_profiles(docs, MODS, atomic=["image"])
    stream = DocumentStream(table, 4096, seed=2)
    pieces = {}
    def epoch0_left():
        return stream.epoch == 0 or any(p.epoch == 0 for p, _ in stream.carry) or \
            any(p.epoch == 0 for p in stream.pending)
    for _ in range(200):
        if not epoch0_left():
            break
        batch = (pack_balanced if balance else pack_sequential)(stream, 4, 2, 4096)
        for cell in batch.cells:
            for seq in cell:
                assert sum(p.length for p in seq) <= 4096
                for p in seq:
                    if p.epoch == 0:
                        pieces.setdefault(p.doc, []).append((p.start, p.end))
    assert not epoch0_left()
    for d in range(len(docs)):
        spans = sorted(pieces.get(d, []))
        ends = [0] + [b for _, b in spans]
        assert [a for a, _ in spans] == ends[:-1] and ends[-1] == table.doc_len[d], (d, spans)
    if balance:  # the 1024-token image of the long document is never cut
        assert all(not (a < 30 + 1024 and b > 30 and (a > 30 or b < 30 + 1024)) for a, b in pieces[len(docs) - 1])


# ------------------------------------------------------------------------------------------ the loader
def _loader(demo, dp_rank=0, dp=2, accum=2, **kw):
    c = Corpus(demo, MODALITIES, VOCAB_SIZE, atomic=["image"])
    settings = LoaderSettings(seq_len=128, micro_batch_size=2, dp_size=dp, dp_rank=dp_rank, grad_accum=accum, seed=7)
    return MoTDataLoader(c, settings, **kw)


def _fingerprint(step):
    return [(mb.tokens.clone(), mb.labels.clone(), mb.modality_ids.clone()) for mb in step.micro_batches]


def test_resume_reproduces_the_stream(demo):
    full = _loader(demo)
    ref = [_fingerprint(next(full)) for _ in range(8)]
    first = _loader(demo)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON (checkpoints)
    first.close()
    resumed = _loader(demo)
    resumed.load_state_dict(state)
    for k in range(3, 8):
        got = _fingerprint(next(resumed))
        assert all(torch.equal(a, b) for x, y in zip(got, ref[k]) for a, b in zip(x, y)), f"step {k}"
    full.close()
    resumed.close()


def test_ranks_share_one_global_batch_and_its_counts(demo):
    """The DP ranks' micro-batches partition one global batch; each carries that batch's per-modality
    loss-token counts, equal to the labels actually present over all ranks."""
    loaders = [_loader(demo, dp_rank=r) for r in range(2)]
    for _ in range(3):
        steps = [next(L) for L in loaders]
        counts = torch.zeros(3)
        for s in steps:
            for mb in s.micro_batches:
                valid = mb.labels != IGNORE_INDEX
                counts += torch.bincount(mb.label_modalities[valid], minlength=3).float()
                # labels are the next token of the same piece; inputs and labels stay aligned
                nxt = mb.tokens[1:][valid[:-1]]
                assert torch.equal(mb.labels[:-1][valid[:-1]], nxt)
        assert torch.equal(counts, steps[0].global_label_counts) and torch.equal(counts, steps[1].global_label_counts)
        assert not torch.equal(steps[0].micro_batches[0].tokens, steps[1].micro_batches[0].tokens)
    for L in loaders:
        L.close()


def test_loader_settings_come_from_the_config_and_refuse_nonsense(demo):
    """LoaderSettings.from_config takes the shapes from the layout and the data keys from the config; a
    setting out of range is refused by name, and the loader takes only a settings record."""
    from mot_parallel.config import load_config, validate
    cfg = load_config(None, ["model.max_seq_len=64", "train.seed=11", "data.prefetch=3", "data.num_workers=2",
                             "data.balance=false", "train.micro_batch_size=2", "train.global_batch_size=8"])
    layout = validate(cfg, world_size=2)
    got = LoaderSettings.from_config(cfg, layout, dp_rank=1, train=False)
    assert got == LoaderSettings(seq_len=64, micro_batch_size=2, grad_accum=layout.grad_accum, seed=11, dp_size=2,
                                 dp_rank=1, balance=False, prefetch=3, num_workers=2, train=False)
    assert layout.dp * layout.grad_accum * got.micro_batch_size == 8
    for bad in ({"seq_len": 0}, {"grad_accum": 1.5}, {"prefetch": True}, {"dp_rank": 2}, {"dp_rank": -1}):
        with pytest.raises(ValueError, match=f"LoaderSettings.{next(iter(bad))}"):
            LoaderSettings(**{"seq_len": 8, "micro_batch_size": 1, "grad_accum": 1, "seed": 0, "dp_size": 2, **bad})
    with pytest.raises(TypeError, match="takes a LoaderSettings"):
        MoTDataLoader(Corpus(demo, MODALITIES, VOCAB_SIZE), {"seq_len": 8})


def test_loader_builds_routing_plans_on_the_host(demo):
    from mot_parallel.model import ModelSettings, MoTModel
    s = ModelSettings(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=4, ffn_hidden_size=32,
                      vocab_size=VOCAB_SIZE, vocab_multiple=1, modalities=MODALITIES)
    model = MoTModel(s)
    L = _loader(demo, plan_builder=lambda mb: model.build_plan(mb.modality_ids, mb.segment_ids))
    mb = next(L).micro_batches[0]
    assert mb.plan is not None and mb.plan.counts == tuple(torch.bincount(mb.modality_ids.reshape(-1), minlength=3).tolist())
    out = model(mb.tokens, mb.plan, mb.labels, mb.label_modalities)
    assert torch.equal(out.token_count, torch.bincount(mb.label_modalities[mb.labels != IGNORE_INDEX], minlength=3).float())
    L.close()


def test_demo_corpus_is_deterministic_and_cross_modal(tmp_path, demo):
    write_demo_corpus(str(tmp_path / "again"), 600, seed=0)
    assert open(demo + ".bin", "rb").read() == open(str(tmp_path / "again.bin"), "rb").read()
    c = Corpus(demo, MODALITIES, VOCAB_SIZE, atomic=["image"])
    kinds = {tuple(c.segments(d)[1].tolist()) for d in range(c.num_docs)}
    assert {(0, 1), (1, 0), (0, 2), (0, 1, 0, 2), (0,)} <= kinds


def test_textured_demo_images_change_only_the_background():
    """The fidelity study's controlled variant: every document keeps the default's captions, objects, speech and
    prose; only image backgrounds become textures, which differ between images of the same caption."""
    plain, textured = list(documents(400, seed=0)), list(documents(400, seed=0, variant="textured"))
    backgrounds = {}
    for a, b in zip(plain, textured):
        assert [m for _, m in a] == [m for _, m in b]
        for (t, m), (u, _) in zip(a, b):
            if m != MODALITIES.index("image"):
                assert np.array_equal(t, u)
                continue
            objects = t != t.min()  # the default background is the lowest image code
            assert np.array_equal(t[objects], u[objects]) and len(set(u[~objects].tolist())) == 2
            caption = next(tuple(x.tolist()) for x, k in a if k == MODALITIES.index("text"))
            backgrounds.setdefault(caption, set()).add(tuple(u[~objects].tolist()))
    assert sum(len(v) > 1 for v in backgrounds.values()) >= 5  # the caption does not decide the texture
    with pytest.raises(ValueError, match="variant='noise'"):
        next(documents(1, variant="noise"))


def test_vague_demo_captions_drop_only_colour_and_shape_words():
    """The other controlled variant: the same documents, captions missing the colour word (position 5) and/or
    the shape word (6) about half the time each; images unchanged (speech reads the shorter caption aloud)."""
    plain, vague = list(documents(600, seed=0)), list(documents(600, seed=0, variant="vague"))
    dropped = []
    for a, b in zip(plain, vague):
        for (t, m), (u, _) in zip(a, b):
            if m == MODALITIES.index("text") and len(t) == 11:  # a caption (prose is longer, "we hear.." shorter)
                ways = [[w for j, w in enumerate(t.tolist()) if j not in S] for S in ((), (5,), (6,), (5, 6))]
                assert u.tolist() in ways, (t, u)
                dropped.append(11 - len(u))
            elif m == MODALITIES.index("image"):
                assert np.array_equal(t, u)
    assert 0.4 < np.mean(dropped) / 2 < 0.6, np.mean(dropped) / 2
