"""The real-data corpus (mot_parallel/corpus_building/real, tools/build_real_corpus.py), built tiny (40 documents, 32
calibration utterances): byte-identical rebuilds in a fresh process, structure and vocabulary ranges, captions
that only partly determine images, documents that are independent units (hold-out safe), the cache, clear
errors; and its parts against references (k-means vs scikit-learn's Lloyd, WAV parsing vs the `wave` module,
mel bands vs pure tones, the tokenizer's round trip on every prose paragraph).

Tests that synthesise speech need the espeak-ng program (apt: espeak-ng; launch/setup_env.sh installs it as
root) and are skipped, with that reason, where it is missing."""
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import wave

import numpy as np
import pytest

from mot_parallel.data import Corpus, IndexedDataset
from mot_parallel.corpus_building.real import (DEFAULT_PREFIX, MODALITIES, RealCorpusError, RealCorpusOptions,
                                    build_real_corpus)
from mot_parallel.corpus_building.real import build, digits, plan, prose, speech, tokenizer, units

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "build_real_corpus.py")
FILES = (".bin", ".idx", ".mot.json", ".tokenizer.json", ".speech_units.npy")
TINY = RealCorpusOptions(documents=40, calibration_utterances=32)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="no espeak-ng (apt: espeak-ng; launch/setup_env.sh installs it as root)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("no espeak-ng (apt: espeak-ng; launch/setup_env.sh installs it as root)")
    prefix = str(tmp_path_factory.mktemp("real") / "real")
    build_real_corpus(prefix, TINY, workers=2, log=lambda _: None)
    return prefix


def _cli(*args, env=None):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300, env=env)


def _docs(prefix):
    """Per document: [(modality id, tokens)]."""
    ds = IndexedDataset(prefix)
    out = []
    for d in range(ds.num_docs):
        lengths, modes = ds.doc_segments(d)
        toks = np.asarray(ds.doc_tokens(d), dtype=np.int64)
        cuts = np.cumsum(lengths)[:-1]
        out.append(list(zip(modes.tolist(), np.split(toks, cuts))))
    return out


# ----------------------------------------------------------------------------------- determinism
@pytest.mark.slow  # a second build in a new process; the fast instance: the prefix test below rebuilds in-process
@needs_espeak
def test_fresh_process_rebuild_is_byte_identical(tiny, tmp_path):
    """Same arguments -> the same bytes in every file, from a new interpreter with another hash seed and
    one synthesis thread instead of two (neither may matter)."""
    other = str(tmp_path / "again")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=ROOT)
    r = _cli("--output-prefix", other, "--documents", "40", "--calibration-utterances", "32", "--workers", "1",
             env=env)
    assert r.returncode == 0, r.stderr
    for ext in FILES:
        with open(tiny + ext, "rb") as a, open(other + ext, "rb") as b:
            assert a.read() == b.read(), f"{ext} differs between two builds"


@needs_espeak
def test_smaller_corpus_is_a_prefix_of_a_larger_one(tiny, tmp_path):
    """Document i depends on (seed, i) only: tokenizer and speech units do not depend on the corpus size."""
    small = str(tmp_path / "small")
    build_real_corpus(small, RealCorpusOptions(documents=17, calibration_utterances=32), log=lambda _: None)
    big, few = _docs(tiny), _docs(small)
    assert len(few) == 17
    for d, (a, b) in enumerate(zip(few, big)):
        assert [m for m, _ in a] == [m for m, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b)), d


# ------------------------------------------------------------------------------------- structure
@needs_espeak
def test_structure_vocabulary_ranges_and_sidecar(tiny):
    meta = json.load(open(tiny + ".mot.json"))
    ranges = meta["token_ranges"]
    assert meta["modalities"] == list(MODALITIES) and ranges == TINY.token_ranges()
    assert ranges["text"] == [0, 2048] and ranges["image"] == [2048, 2065] and ranges["speech"] == [2065, 2193]
    assert meta["vocab_size"] == 2193 and meta["reused"] == {"scans": 0, "prose_chunks": 0, "sentences": 0}
    corpus = Corpus(tiny, list(MODALITIES), meta["vocab_size"])  # what training opens
    assert corpus.num_docs == 40
    counts, shapes = np.zeros(3, dtype=int), set()
    for doc in _docs(tiny):
        shapes.add(tuple(m for m, _ in doc))
        for m, toks in doc:
            lo, hi = ranges[MODALITIES[m]]
            assert len(toks) > 0 and lo <= toks.min() and toks.max() < hi, (MODALITIES[m], toks.min(), toks.max())
            counts[m] += len(toks)
            if m == 1:
                assert len(toks) == 64
            if m == 2:  # runs of one unit are collapsed
                assert np.all(toks[1:] != toks[:-1])
    # caption->image, image->caption, sentence->speech, interleaved, prose: all five kinds, nothing else
    assert shapes == {(0, 1), (1, 0), (0, 2), (0, 1, 0, 2), (0,)}
    assert all(meta["documents_per_kind"][k] > 0 for k in plan.KINDS)
    assert meta["tokens_per_modality"] == dict(zip(MODALITIES, counts.tolist())) and counts.sum() == meta["tokens"]


@needs_espeak
def test_text_decodes_and_images_are_the_scans(tiny):
    """Text ids decode (with the saved tokenizer) to captions/prose; image tokens are real load_digits scans."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tiny + ".tokenizer.json")
    scans = {digits.image_tokens(im, 0).tobytes() for im in digits.load_scans().images}
    captions = set(digits.all_captions())
    for doc in _docs(tiny):
        kinds = [m for m, _ in doc]
        texts = [tok.decode(t.tolist()) for m, t in doc if m == 0]
        assert all(t and t.isascii() for t in texts)
        for m, toks in doc:
            if m == 1:
                assert (toks - 2048).tobytes() in scans
        if 1 in kinds:
            assert texts[0] in captions
        if kinds == [0, 2]:
            assert texts[0] not in captions and 5 <= len(texts[0].split()) <= 16


# -------------------------------------------------------------------------- captions vs images
def test_captions_only_partly_determine_images():
    """Over all 1,797 scans and many seeds: a caption never names a wrong digit, qualifiers agree with the
    measured ink and slant, and one caption covers many different images (generic ones: several digits)."""
    scans = digits.load_scans()
    ink, shear = digits.ink_and_slant(scans.images)
    by_caption = {}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for i, label in enumerate(scans.labels):
            cap = digits.caption(rng, int(label), scans.weight[i], scans.slant[i])
            named = [n for n in digits.NAMES if re.search(rf"\b{n}\b", cap.lower())]
            assert named in ([], [digits.NAMES[label]]), (cap, label)
            for word, key in (("thick", "weight"), ("thin", "weight"), ("right", "slant"), ("left", "slant")):
                if word in cap:
                    assert word == getattr(scans, key)[i], (cap, i)
            by_caption.setdefault(cap, set()).add(i)
    kinds = {"generic": 0, "named": 0, "qualified": 0}
    for cap, idx in by_caption.items():
        images = {scans.images[i].tobytes() for i in idx}
        assert len(images) == len(idx) > 1, cap  # same caption, different scans
        labels = {int(scans.labels[i]) for i in idx}
        qualified = any(w in cap for w in ("thick", "thin", "slant"))
        kinds["generic" if len(labels) > 1 else "qualified" if qualified else "named"] += 1
    assert all(v > 0 for v in kinds.values()), kinds
    for cls in range(10):  # "thick" scans of a class have more ink than its "thin" ones; slants differ in sign
        sel = scans.labels == cls
        w, s = np.array(scans.weight, dtype=object)[sel], np.array(scans.slant, dtype=object)[sel]
        assert ink[sel][w == "thick"].min() > ink[sel][w == "thin"].max()
        assert shear[sel][s == "right"].max() < shear[sel][s == "left"].min()


# ------------------------------------------------------------------------ hold-out friendliness
def test_documents_are_independent_units_at_the_default_size():
    """At the default size no scan, prose chunk or spoken sentence is in two documents, and no spoken
    sentence appears in a prose document: a document-level train/validation split cannot leak."""
    scans = digits.load_scans()
    _, chunks, sentences = build._text_sources(0, RealCorpusOptions().prose_share)
    p = plan.plan_documents(RealCorpusOptions().documents, 0, scans, chunks, sentences)
    assert p.reused == {"scans": 0, "prose_chunks": 0, "sentences": 0}
    used_scans = [seg for doc in p.documents for m, seg in doc if m == "image"]
    assert len(used_scans) == len(set(used_scans))
    prose_docs = [doc[0][1] for doc, k in zip(p.documents, p.kinds) if k == "prose"]
    spoken = [doc[0][1] for doc, k in zip(p.documents, p.kinds) if k == "sentence_speech"]
    assert len(prose_docs) == len(set(prose_docs)) and len(spoken) == len(set(spoken))
    in_prose = {s for c in prose_docs for s in prose.sentences(c)}
    assert not in_prose & set(spoken)
    many = plan.plan_documents(4000, 0, scans, chunks, sentences)  # beyond capacity: reuse is counted
    assert many.reused["scans"] > 0


# -------------------------------------------------------------------------------------- caching
@needs_espeak
def test_cache_skips_an_up_to_date_corpus_and_not_an_incomplete_one(tiny, tmp_path):
    prefix = str(tmp_path / "real")
    for ext in FILES:
        shutil.copy(tiny + ext, prefix + ext)
    before = {ext: os.stat(prefix + ext).st_mtime_ns for ext in FILES}
    logs = []
    build_real_corpus(prefix, TINY, log=logs.append)
    assert "up to date" in logs[-1] and before == {ext: os.stat(prefix + ext).st_mtime_ns for ext in FILES}
    env = build.environment()
    key = json.load(open(prefix + ".mot.json"))["build_key"]
    assert key == build.build_key(TINY, env) != build.build_key(RealCorpusOptions(documents=41), env)
    assert build.up_to_date(prefix, key) and not build.up_to_date(prefix, build.build_key(RealCorpusOptions(), env))
    os.remove(prefix + ".tokenizer.json")  # any missing or inconsistent file means: rebuild
    assert not build.up_to_date(prefix, key)
    shutil.copy(tiny + ".tokenizer.json", prefix + ".tokenizer.json")
    with open(prefix + ".bin", "ab") as f:
        f.write(b"\0\0")
    assert not build.up_to_date(prefix, key)


# ---------------------------------------------------------------------------------- clear errors
def test_missing_espeak_is_a_clear_error_before_any_work(tmp_path):
    """The command line ends with one `error:` line naming the package and the install command."""
    spec = importlib.util.spec_from_file_location("build_real_corpus_tool", TOOL)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--output-prefix", str(tmp_path / "x"), "--documents", "5", "--espeak", "no-such-espeak-program"])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "espeak-ng" in message and "apt-get install espeak-ng" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field,value", [("documents", 0), ("speech_units", 1), ("prose_share", 1.0),
                                         ("text_vocab", 10)])
def test_bad_options_are_refused_by_name(tmp_path, field, value):
    opts = RealCorpusOptions(**{field: value})
    with pytest.raises(RealCorpusError, match=field):
        build_real_corpus(str(tmp_path / "x"), opts, log=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_missing_python_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(RealCorpusError, match=r"scikit-learn.*pip install -e '\.\[study\]'"):
        digits.load_scans()
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(RealCorpusError, match=r"tokenizers.*pip install -e '\.\[study\]'"):
        tokenizer.train_tokenizer(["A sentence."], 200)


# ------------------------------------------------------------------------ parts vs references
def test_kmeans_matches_scikit_learn_lloyd_from_the_same_start():
    """Same initial centres -> the same fixed point as sklearn's KMeans (lloyd, tol=0); tolerance 1e-8."""
    from sklearn.cluster import KMeans
    for seed in range(4):
        rng = np.random.default_rng(seed)
        x = np.concatenate([rng.normal(loc, 1.0, size=(200, 5)) for loc in rng.normal(0, 4, size=(6, 1))])
        ours = units.kmeans(x, 8, seed, iters=300)
        init = units.kmeans(x, 8, seed, iters=0)
        ref = KMeans(8, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(x).cluster_centers_
        np.testing.assert_allclose(ours, ref, atol=1e-8)
        assert np.array_equal(units.kmeans(x, 8, seed), units.kmeans(x, 8, seed))


def test_collapse_runs_keeps_one_of_each_run():
    rng = np.random.default_rng(0)
    for _ in range(200):
        u = rng.integers(0, 3, size=int(rng.integers(0, 30)))
        c = units.collapse_runs(u)
        ref = [int(v) for i, v in enumerate(u) if i == 0 or v != u[i - 1]]
        assert c.tolist() == ref


def test_wav_parser_matches_the_wave_module():
    rng = np.random.default_rng(0)
    for n in (0, 1, 1000):
        samples = rng.integers(-32768, 32767, size=n).astype("<i2")
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(22050), w.writeframes(samples.tobytes())
        got, rate = speech.parse_wav(buf.getvalue(), "test")
        assert rate == 22050 and np.array_equal(got, samples)
    with pytest.raises(RealCorpusError, match="no WAV audio"):
        speech.parse_wav(b"", "test")


def test_log_mel_puts_a_pure_tone_in_its_band():
    rate = 22050
    bank = speech.mel_filterbank(rate, 1024)
    centres = (np.arange(1024 // 2 + 1) * rate / 1024) @ bank / bank.sum(0)
    for f in np.random.default_rng(0).uniform(200, 7000, size=20):
        t = np.arange(rate // 2) / rate
        feats = speech.log_mel((8000 * np.sin(2 * np.pi * f * t)).astype(np.int16), rate)
        assert feats.shape[1] == speech.N_MELS
        assert abs(centres[int(feats.mean(0).argmax())] - f) < 0.15 * f, f


def test_tokenizer_round_trips_every_prose_paragraph():
    paras = [p.text for p in prose.paragraphs()]
    tok = tokenizer.train_tokenizer(paras + digits.all_captions(), 2048)
    assert tok.get_vocab_size() == 2048
    ids = tokenizer.encode(tok, paras)
    assert all(tok.decode(i) == p for i, p in zip(ids, paras))
    assert max(max(i) for i in ids) < 2048 and not any(0 in i for i in ids)  # never <unk>


def test_real_cpu_config_matches_the_default_corpus():
    """configs/real_cpu.yaml trains on what `tools/build_real_corpus.py` writes by default."""
    from mot_parallel.config import load_config, validate
    cfg = load_config(os.path.join(ROOT, "configs", "real_cpu.yaml"))
    validate(cfg)
    assert cfg.data.path == DEFAULT_PREFIX  # the tool's --output-prefix default
    assert cfg.model.vocab_size == RealCorpusOptions().vocab_size() and list(cfg.model.modalities) == list(MODALITIES)
