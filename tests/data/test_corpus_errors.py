"""Bad corpora fail when the corpus is opened, before training, naming the file, the document and the fix:
token ids past model.vocab_size (checked once per corpus, cached, re-checked when the files change), a
corrupt index (modality id -1, negative lengths, a document index that goes backwards, misplaced segments),
corpora with nothing to learn, caches that outlive the corpus they were derived from. Random corpora and
random corruptions check that the checks find exactly the first bad document and never crash otherwise."""
import os
import struct

import numpy as np
import pytest

from mot_parallel.data import Corpus, DataError, IndexedDataset, IndexedWriter
from mot_parallel.data import token_ids
from mot_parallel.data.token_ids import CACHE_SUFFIX, check_corpus_token_ids, check_token_ids

MODS = ["text", "image", "speech"]


def write(prefix, docs, dtype=np.uint16, sidecar=None, multimodal=True):
    """docs: per document a list of (tokens, modality id) segments. A corpus already at `prefix` (this test's
    own, without the sidecar that would mark it) is removed first: writers never replace an unmarked one."""
    for ext in (".bin", ".idx", ".mot.json"):
        if os.path.exists(f"{prefix}{ext}"):
            os.remove(f"{prefix}{ext}")
    with IndexedWriter(str(prefix), dtype, multimodal=multimodal) as w:
        for doc in docs:
            w.add_document([(np.asarray(t), m) for t, m in doc])
        w.close(sidecar)
    return str(prefix)


def random_docs(rng, n_docs, vocab, max_len=40, empty_share=0.1):
    docs = []
    for _ in range(n_docs):
        if rng.random() < empty_share:
            docs.append([])
            continue
        segs = []
        for _ in range(int(rng.integers(1, 4))):
            segs.append((rng.integers(0, vocab, int(rng.integers(0, max_len))), int(rng.integers(0, 3))))
        docs.append(segs)
    return docs


# ------------------------------------------------------------------------------------------ token ids
def test_ids_between_vocab_and_padded_vocab_are_refused(tmp_path):
    """The reported failure: a corpus without a sidecar, ids in [vocab_size, padded vocab), used to train with
    loss inf. Now opening it names the file, the document, the position, the id and the fix."""
    docs = [[(np.arange(1, 20), 0)], [(np.array([5, 6]), 0), (np.array([7, 515, 8]), 1)], [(np.arange(3), 2)]]
    prefix = write(tmp_path / "c", docs)  # no sidecar: nothing else says what vocabulary the corpus has
    with pytest.raises(DataError) as e:
        Corpus(prefix, MODS, 512)
    msg = str(e.value)
    for words in ("c.bin", "document 1 has token id 515 at position 3", "[0, 512)", "model.vocab_size >= 516",
                  "tools/preprocess_data.py"):
        assert words in msg, msg
    Corpus(prefix, MODS, 516)  # the same corpus fits a vocabulary that holds it


def test_ids_past_the_padded_vocab_and_negative_ids_are_refused(tmp_path):
    big = write(tmp_path / "big", [[(np.array([1, 2]), 0)], [(np.array([3, 10 ** 6]), 0)]], dtype=np.int32)
    with pytest.raises(DataError, match="document 1 has token id 1000000 at position 1"):
        Corpus(big, MODS, 70000)
    neg = write(tmp_path / "neg", [[(np.array([1, -4, 2]), 0)]], dtype=np.int32)
    with pytest.raises(DataError, match="document 0 has token id -4 at position 1"):
        Corpus(neg, MODS, 512)


@pytest.mark.parametrize("seed", range(30))
def test_id_check_finds_exactly_the_first_bad_document(tmp_path, seed, monkeypatch):
    """Random corpora (empty documents and segments included), the scan cut into tiny chunks so documents
    straddle chunk boundaries: the check agrees with a brute-force scan, and clean corpora pass."""
    rng = np.random.default_rng(seed)
    monkeypatch.setattr(token_ids, "_CHUNK_TOKENS", int(rng.integers(1, 64)))
    vocab = int(rng.integers(2, 300))
    docs = random_docs(rng, int(rng.integers(1, 60)), vocab)
    for _ in range(int(rng.integers(0, 3))):  # plant a few bad ids (or none)
        d = int(rng.integers(len(docs)))
        docs[d] = docs[d] + [(np.array([vocab + int(rng.integers(0, 5))]), 0)]
    prefix = write(tmp_path / "c", docs, dtype=np.int32)
    first_bad = next((d for d, doc in enumerate(docs) if any(int(np.max(t, initial=0)) >= vocab for t, _ in doc)),
                     None)
    ds = IndexedDataset(prefix)
    if first_bad is None:
        check_corpus_token_ids(ds, vocab)
    else:
        with pytest.raises(DataError, match=f"document {first_bad} has token id"):
            check_corpus_token_ids(ds, vocab)


def test_id_scan_is_cached_and_redone_when_the_corpus_changes(tmp_path, monkeypatch):
    good = [[(np.arange(1, 9), 0)], [(np.array([3, 4]), 1)]]
    prefix = write(tmp_path / "c", good)
    Corpus(prefix, MODS, 512)
    assert os.path.isfile(prefix + CACHE_SUFFIX)
    scans = []
    real_scan = token_ids._scan
    monkeypatch.setattr(token_ids, "_scan", lambda ds: scans.append(ds.prefix) or real_scan(ds))
    Corpus(prefix, MODS, 512)
    Corpus(prefix, MODS, 9)        # another vocabulary: the cached per-document ranges answer it
    with pytest.raises(DataError, match="document 0 has token id 8"):
        Corpus(prefix, MODS, 8)
    assert scans == []
    write(tmp_path / "c", [[(np.arange(1, 9), 0)], [(np.array([3, 600]), 1)]])  # same sizes, new content
    with pytest.raises(DataError, match="document 1 has token id 600"):
        Corpus(prefix, MODS, 512)
    assert scans == [prefix]


def test_batch_check_moved_to_the_data_package():
    """check_token_ids lives with the data (the embedding's docstring points there); numpy and torch alike."""
    import torch
    import mot_parallel.tensor_parallel.embedding as emb
    assert not hasattr(emb, "check_token_ids") and "data/token_ids.py" in emb.__doc__
    check_token_ids(torch.tensor([[0, 5], [7, 511]]), 512)
    with pytest.raises(DataError, match="micro-batch 3: token id 512 is outside the vocabulary"):
        check_token_ids(np.array([1, 512, 600]), 512, where="micro-batch 3")


# ------------------------------------------------------------------------------------------ index structure
def _patch(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def _layout(prefix):
    ds = IndexedDataset(prefix)
    n_seq, n_doc = len(ds.lengths), len(ds.doc_index)
    return {"lengths": 34, "pointers": 34 + 4 * n_seq, "doc_index": 34 + 12 * n_seq,
            "modes": 34 + 12 * n_seq + 8 * n_doc}


@pytest.mark.parametrize("field,index,fmt,value,words", [
    ("modes", 3, "<b", -1, ["c.idx", "segment 3 (document 1) has modality id -1"]),
    ("lengths", 4, "<i", -2, ["c.idx", "segment 4 (document 2) has length -2"]),
    ("doc_index", 2, "<q", 1, ["c.idx", "goes backwards at document 1 (it starts at segment 2 and ends at 1)"]),
    ("doc_index", 0, "<q", 1, ["c.idx", "must run from 0 to the segment count"]),
    ("pointers", 2, "<q", 0, ["c.idx", "segment 2 (document 1) starts at byte 0", "back to back"]),
])
def test_corrupt_index_is_refused_when_opened(tmp_path, field, index, fmt, value, words):
    docs = [[(np.arange(1, 4), 0), (np.arange(1, 3), 1)], [(np.arange(5), 0), (np.arange(2), 2)],
            [(np.arange(4), 1)], [(np.arange(3), 0)]]
    prefix = write(tmp_path / "c", docs)
    offset = _layout(prefix)[field] + index * struct.calcsize(fmt)
    _patch(prefix + ".idx", offset, fmt, value)
    with pytest.raises(DataError) as e:
        IndexedDataset(prefix)
    for w in words + ["tools/preprocess_data.py"]:
        assert w in str(e.value), str(e.value)


def test_modality_id_past_the_model_is_named_with_its_document(tmp_path):
    prefix = write(tmp_path / "c", [[(np.arange(3), 0)], [(np.arange(3), 0), (np.arange(2), 2)]])
    with pytest.raises(DataError, match=r"segment 2 \(document 1\) has modality id 2, but model.modalities"):
        Corpus(prefix, ["text", "image"], 512)


def _corrupt(raw, layout, n_seq, n_doc, rng):
    """A random byte, or a plausible value in one index field (these often still open: the harder case)."""
    data = bytearray(raw)
    kind = rng.integers(4)
    if kind == 0:
        data[int(rng.integers(9, len(data)))] = int(rng.integers(256))
    elif kind == 1:
        struct.pack_into("<b", data, layout["modes"] + int(rng.integers(n_seq)), int(rng.integers(-2, 5)))
    elif kind == 2:
        struct.pack_into("<q", data, layout["doc_index"] + 8 * int(rng.integers(n_doc)), int(rng.integers(n_seq + 2)))
    else:
        struct.pack_into("<i", data, layout["lengths"] + 4 * int(rng.integers(n_seq)), int(rng.integers(-1, 12)))
    return bytes(data)


def test_random_index_corruption_never_crashes(tmp_path):
    """Corrupt a valid index at random: opening and reading every document either works or raises DataError;
    nothing else (no IndexError, no negative-size reads, no out-of-range id or modality reaching a batch)."""
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 12, 512, max_len=9)
    clean = write(tmp_path / "clean", docs, sidecar={"modalities": MODS, "vocab_size": 512})
    raw, layout, ds = open(clean + ".idx", "rb").read(), _layout(clean), IndexedDataset(clean)
    opened = 0
    for trial in range(200):
        prefix = str(tmp_path / f"t{trial}")
        for ext in (".bin", ".mot.json"):
            os.link(clean + ext, prefix + ext)
        open(prefix + ".idx", "wb").write(_corrupt(raw, layout, len(ds.lengths), len(ds.doc_index), rng))
        try:
            corpus = Corpus(prefix, MODS, 512)
        except DataError:
            continue
        opened += 1
        for d in range(corpus.num_docs):
            toks, mods = corpus.read(d, 0, int(corpus.doc_len[d]))
            assert len(toks) == corpus.doc_len[d] and ((mods >= 0) & (mods < len(MODS))).all()
            assert ((toks >= 0) & (toks < 512)).all()
    assert opened >= 20, f"only {opened} corruptions opened: the test would not see a check that lets bad data by"


def test_writer_refuses_ids_and_modes_it_would_wrap(tmp_path):
    with pytest.raises(DataError, match="do not fit the corpus dtype uint16"):
        write(tmp_path / "a", [[(np.array([1, 70000]), 0)]])
    with pytest.raises(DataError, match="modality id -1 must be in"):
        write(tmp_path / "b", [[(np.array([1, 2]), -1)]])
    assert not [n for n in os.listdir(tmp_path) if not n.startswith(".")], "nothing half-written is left"


# ------------------------------------------------------------------------------------------ corpus and caches
def test_unreadable_sidecar_is_named(tmp_path):
    prefix = write(tmp_path / "c", [[(np.arange(3), 0)]], sidecar={"modalities": MODS})
    open(prefix + ".mot.json", "wb").write(b'{"modalities": ["t\xe9xt"]}')
    with pytest.raises(DataError, match="c.mot.json: unreadable sidecar"):
        IndexedDataset(prefix)
    open(prefix + ".mot.json", "w").write('{"vocab_size": "big"}')
    with pytest.raises(DataError, match="'vocab_size' must be a positive integer"):
        IndexedDataset(prefix)


def test_token_range_cache_follows_the_files_not_their_age(tmp_path):
    """The segment cache of a plain corpus was valid while newer than the .bin: a corpus copied over it with
    its old modification time (cp -p, rsync -t) kept the old segments. It is now keyed on the files."""
    ranges = {"image": [256, 448]}
    a = write(tmp_path / "c", [[(np.array([1, 2, 300, 301]), 0)]], multimodal=False)
    assert Corpus(a, MODS, 512, token_ranges=ranges).segments(0)[0].tolist() == [2, 2]
    write(tmp_path / "c", [[(np.array([300, 1, 2, 3]), 0)]], multimodal=False)
    os.utime(a + ".bin", ns=(0, 0))  # older than the cache
    assert Corpus(a, MODS, 512, token_ranges=ranges).segments(0)[0].tolist() == [1, 3]
