"""The validation split (`data.valid_fraction`) as properties over random corpora, and its refusals.

- partition: every document on exactly one side, both sides non-empty, for 2 .. 100 000 documents and
  fractions from 1e-9 to 1 - 1e-9 (a fraction that rounds to no document holds out exactly one; one that
  rounds to all keeps exactly one for training: the documented behaviour, README "Evaluate");
- a fixed function of (index, fraction): the same split in another process, and (whenever the fraction
  holds out at least one document by itself) a document's side does not depend on the corpus size;
- close to the fraction on large corpora (within 5 sigma, binomial);
- a source that cannot be split (one document), a held-out side with nothing to predict (single-token
  documents), and data.valid_fraction together with data.valid_path are refused naming the key, before
  any training (the preflight says it too).
The default run draws 200 random (size, fraction) pairs; `--slow` draws 3 000.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.data import DataError, IndexedWriter
from mot_parallel.data.corpus_set import split_documents
from mot_parallel.data.datasets import open_datasets
from mot_parallel.data.from_config import check_data

EXTREME_FRACTIONS = [1e-9, 1e-4, 0.01, 0.5, 0.99, 1 - 1e-4, 1 - 1e-9]


def random_case(rng):
    n = int(rng.choice([2, 3, 4, int(np.exp(rng.uniform(np.log(2), np.log(100_000))))]))
    fraction = float(rng.choice(EXTREME_FRACTIONS)) if rng.random() < 0.5 else float(rng.uniform(0, 1))
    return n, max(fraction, 1e-12)


def check_split(n, fraction):
    train, valid = split_documents(n, fraction)
    assert len(train) >= 1 and len(valid) >= 1, (n, fraction)
    assert np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(n)), (n, fraction)
    again = split_documents(n, fraction)
    assert np.array_equal(train, again[0]) and np.array_equal(valid, again[1])
    if n >= 10_000 and 0.001 < fraction < 0.999:
        sigma = np.sqrt(fraction * (1 - fraction) / n)
        assert abs(len(valid) / n - fraction) < 5 * sigma + 2 / n, (n, fraction, len(valid))
    by_itself = 1 < len(valid) < n - 1  # no document was moved to keep both sides non-empty
    if by_itself and n >= 4:
        small_train, small_valid = split_documents(n // 2, fraction)
        if 1 < len(small_valid) < n // 2 - 1:
            assert np.array_equal(small_valid, valid[valid < n // 2]), (n, fraction)


def test_random_splits_are_partitions():
    rng = np.random.default_rng(11)
    for _ in range(200):
        check_split(*random_case(rng))


@pytest.mark.slow
def test_random_splits_are_partitions_many():
    rng = np.random.default_rng(12)
    for _ in range(3000):
        check_split(*random_case(rng))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("fraction", EXTREME_FRACTIONS)
def test_tiny_corpora_hold_out_one_document_and_keep_one(n, fraction):
    train, valid = split_documents(n, fraction)
    assert len(valid) >= 1 and len(train) >= 1 and len(train) + len(valid) == n


def test_the_split_is_the_same_in_another_process():
    cases = [(3, 0.01), (97, 0.1), (20_000, 0.05), (5, 0.999)]
    code = ("import json, sys; from mot_parallel.data.corpus_set import split_documents; "
            "print(json.dumps([split_documents(n, f)[1].tolist() for n, f in json.loads(sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "123", **_env()}).stdout
    assert json.loads(out) == [split_documents(n, f)[1].tolist() for n, f in cases]


def _env():
    import os
    return {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}


# ------------------------------------------------------------------------------------------ refusals
def _corpus(prefix, lengths):
    """A text corpus with one document per entry of `lengths` (tokens)."""
    with IndexedWriter(prefix, np.uint16, multimodal=True) as w:
        for d, n in enumerate(lengths):
            w.add_document([(np.arange(n, dtype=np.int64) % 200 + d, 0)])
        w.close({"modalities": ["text"], "vocab_size": 256})
    return prefix


def _cfg(path, *extra):
    return load_config(None, [f"data.path={path}", "model.modalities=[text,image]", "model.vocab_size=256",
                              "model.max_seq_len=32", *extra])


def test_a_source_with_one_document_cannot_be_split_and_says_so(tmp_path):
    big = _corpus(str(tmp_path / "big"), [20] * 50)
    one = _corpus(str(tmp_path / "one"), [20])
    cfg = _cfg(f"0.5 {big} 0.5 {one}", "data.valid_fraction=0.1")
    for check in (lambda: open_datasets(cfg), lambda: check_data(cfg, full=True), lambda: check_data(cfg, full=False)):
        with pytest.raises(DataError, match=r"data.valid_fraction.*one.*1 document.*data.valid_path"):
            check()


def test_a_held_out_side_with_nothing_to_predict_is_refused(tmp_path):
    # 2 documents, one of a single token: whichever side it lands on, training keeps the other (the hash
    # decides); the test builds the corpus so that the held-out one is the single token
    _, valid = split_documents(2, 0.5)
    lengths = [20, 20]
    lengths[int(valid[0])] = 1
    cfg = _cfg(_corpus(str(tmp_path / "c"), lengths), "data.valid_fraction=0.5")
    with pytest.raises(DataError, match=r"data.valid_fraction.*no next-token target"):
        open_datasets(cfg)


def test_valid_path_and_valid_fraction_together_are_refused(tmp_path):
    train = _corpus(str(tmp_path / "train"), [20] * 5)
    held = _corpus(str(tmp_path / "held"), [20] * 3)
    with pytest.raises(ConfigError, match=r"data.valid_path.*data.valid_fraction"):
        validate(_cfg(train, f"data.valid_path={held}", "data.valid_fraction=0.1"))
    sets = open_datasets(_cfg(train, f"data.valid_path={held}"))  # valid_path alone: its own corpus, whole
    assert sets.valid.table.num_docs == 3 and sets.train.table.num_docs == 5
