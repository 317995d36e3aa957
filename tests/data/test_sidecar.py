"""The corpus sidecar (<prefix>.mot.json) is a typed record that must agree with the index it describes: names
unique, each field of its type, documents / tokens / tokens per modality equal to the index's. A sidecar that
names the modality ids wrongly is refused when the corpus is opened (so by `pretrain.py --check`), never trained
on; every refusal names the file, the field and the fix. Random sidecars never crash the reader."""
import importlib.util
import json
import os

import numpy as np
import pytest

from mot_parallel.data import DataError, IndexedDataset
from mot_parallel.corpus_building.demo_corpus import write_demo_corpus
from mot_parallel.data.sidecar import schema_problem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def demo(tmp_path):
    """A small demo corpus (text, image, speech) and a way to rewrite fields of its sidecar."""
    prefix = write_demo_corpus(str(tmp_path / "demo"), 40)
    meta = json.load(open(prefix + ".mot.json"))

    def with_fields(**fields):
        with open(prefix + ".mot.json", "w") as f:
            json.dump(dict(meta, **fields), f)
        return prefix
    return prefix, meta, with_fields


def _pretrain_check(prefix, run_dir):
    spec = importlib.util.spec_from_file_location("_sidecar_pretrain", os.path.join(ROOT, "launch", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as e:
        module.main(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--check", f"data.path={prefix}",
                     f"run.output_dir={run_dir}"])
    return str(e.value.code)


def test_a_sidecar_naming_a_modality_twice_is_refused_by_check(demo, tmp_path):
    """The reported failure: [text, text, speech] passed --check and trained every image segment as text."""
    prefix, meta, with_fields = demo
    message = _pretrain_check(with_fields(modalities=["text", "text", "speech"]), tmp_path / "run")
    assert message.startswith("error:") and "demo.mot.json" in message and "['text'] more than once" in message


def test_names_in_another_order_disagree_with_the_counts(demo):
    """[text, speech, image] over a [text, image, speech] corpus: the per-modality token counts say which is which."""
    prefix, meta, with_fields = demo
    with_fields(modalities=["text", "speech", "image"],
                tokens_per_modality=meta.get("tokens_per_modality") or _counts(prefix, ["text", "image", "speech"]))
    with pytest.raises(DataError, match=r"says \d+ speech tokens, but the index holds \d+ tokens of id 1"):
        IndexedDataset(prefix)


def _counts(prefix, names):
    ds = IndexedDataset(prefix)
    return {n: int(ds.lengths[ds.modes == i].sum()) for i, n in enumerate(names)}


@pytest.mark.parametrize("fields,words", [
    ({"continuous": {"image": {"patch_dim": "abc"}}}, "continuous.image.patch_dim must be a positive integer"),
    ({"continuous": {"image": 5}}, "continuous.image must be an object"),
    ({"continuous": [{"image": 5}]}, "'continuous' must be an object keyed by modality"),
    ({"continuous": {"video": {"patch_dim": 4}}}, "'continuous' names ['video']"),
    ({"continuous": {"image": {"grid": [3]}}}, "continuous.image.grid must be [rows, cols]"),
    ({"modalities": "text"}, "'modalities' must be a list of names"),
    ({"vocab_size": True}, "'vocab_size' must be a positive integer"),
    ({"documents": 41}, "says 41 documents, but the index has 40"),
    ({"tokens": 7}, "says 7 tokens, but the index holds"),
    ({"tokens_per_modality": {"text": -1}}, "'tokens_per_modality' must map names to integers >= 0"),
    ({"modalities": ["text", "image"]}, "has modality id 2, but"),
    ({"tokenizer": "gpt2"}, "tokenizer must be an object"),
    ({"tokenizer": {"path": "t.json", "special_ids": ["eod"]}}, "tokenizer.special_ids must be an object"),
    ({"tokenizer": {"path": "t.json", "special_ids": {"eod": "x"}}}, "tokenizer.special_ids.eod must be a token id"),
    ({"tokenizer": {"path": "t.json", "document_prefix": "<s>"}}, "tokenizer.document_prefix must be a list"),
    ({"image_codes": {"image": {"first": -1, "codebook_size": 16}}}, "image_codes.image.first must be an integer"),
    ({"image_codes": {"image": {"first": 4, "grid": [2, "x"]}}}, "image_codes.image.grid must be [rows, cols]"),
    ({"image_codes": {"video": {"first": 4}}}, "'image_codes' names ['video']"),
    ({"continuous": {"image": {"patch_dim": 4, "boi_token": "<boi>"}}}, "continuous.image.boi_token must be a token"),
    ({"token_ranges": {"image": [9, 4]}}, "token_ranges.image must be [first, end) integers with first < end"),
])
def test_fields_of_the_wrong_type_or_count_are_named(demo, fields, words):
    prefix, _, with_fields = demo
    with pytest.raises(DataError) as e:
        IndexedDataset(with_fields(**fields))
    assert "demo.mot.json" in str(e.value) or "demo.idx" in str(e.value)
    assert words in str(e.value), str(e.value)


def test_optional_records_are_accepted(demo):
    """The records tools/preprocess_data.py writes (the tokenizer, VQ image codes, token ranges; continuous
    entries with markers are checked by the preprocessing tests) and unknown keys are kept."""
    prefix, meta, with_fields = demo
    tokenizer = {"name": "tok", "library": "tokenizers", "path": "/models/tok.json", "vocab_size": 300,
                 "sha256": "ab" * 32, "special_ids": {"bos": None, "eos": 0, "pad": None, "unk": None, "eod": 0},
                 "document_prefix": [], "document_suffix": [0], "kind": "huggingface"}
    codes = {"first": 300, "codebook_size": 256, "grid": [4, 4], "image_size": [32, 32], "vq": "/models/vq",
             "vq_sha256": "cd" * 32, "boi_token": 1, "eoi_token": 2}
    ds = IndexedDataset(with_fields(tokenizer=tokenizer, image_codes={"image": codes},
                                    token_ranges={"image": [300, 556]}, written_by_a_newer_version=[1, 2]))
    assert ds.meta["tokenizer"]["name"] == "tok" and ds.meta["image_codes"]["image"]["first"] == 300


def test_random_sidecars_never_crash_the_reader():
    """Any JSON value in any field: a problem string or none, never an exception."""
    rng = np.random.default_rng(0)
    values = [None, True, -1, 0, 3, 2.5, "x", "", [], ["text"], ["text", "text"], [1, 2], {}, {"image": 5},
              {"image": {"patch_dim": "abc", "grid": [0, 1]}}, {"text": [1]}, [[1]], {"a": {"b": None}},
              {"special_ids": 5, "path": "t"}, {"special_ids": {"eod": [1]}}, {"image": {"first": -1, "vq": 3}},
              {"document_prefix": "ab"}, {"image": [5, 2]}]
    fields = ["format", "modalities", "vocab_size", "documents", "tokens", "tokens_per_modality", "token_ranges",
              "continuous", "tokenizer", "source", "sources", "image_codes"]
    for _ in range(2000):
        meta = {f: values[rng.integers(len(values))] for f in fields if rng.random() < 0.5}
        assert isinstance(schema_problem(meta), str)
