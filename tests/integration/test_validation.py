"""Validation and blending: held-out losses, the split, blends of corpora, and the headline metric.

- the document-level split is a partition, deterministic, independent of seed and corpus size;
- evaluation never perturbs training: the loss sequence is bit-identical with evaluation on and off;
- validation losses are the same in every layout (single process, DP=2 ZeRO-3, TP=2+SP, PP=2), within the
  layout tests' tolerance (relative 1e-4, fp32), and the same after a kill and resume (exact);
- a blend respects its weights within sampling error over many documents, resumes exactly, counts what each
  source contributed, accepts a source holding a subset of the model's modalities and refuses one naming a
  modality the model lacks."""
import json
import os

import numpy as np
import pytest
import torch

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.data import DataError, IndexedWriter, LoaderSettings, MoTDataLoader
from mot_parallel.config.blend_spec import parse_blend
from mot_parallel.data.blend import BlendOrder
from mot_parallel.data.corpus_set import split_documents
from mot_parallel.data.datasets import open_datasets
from mot_parallel.testing import DistributedTestError, run_distributed
from train_utils import losses, train_body

EVAL = ["data.valid_fraction=0.1", "train.eval_interval=3", "train.eval_iters=2"]


@pytest.mark.parametrize("n", [2, 3, 10, 97, 1000, 20000])
@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 0.9])
def test_split_is_a_deterministic_partition(n, fraction):
    train, valid = split_documents(n, fraction)
    assert len(np.intersect1d(train, valid)) == 0 and len(train) + len(valid) == n
    assert len(train) >= 1 and len(valid) >= 1
    again = split_documents(n, fraction)
    assert np.array_equal(train, again[0]) and np.array_equal(valid, again[1])
    if n >= 1000:  # a fixed hash, close to the fraction; a document's side never depends on the corpus size
        assert abs(len(valid) / n - fraction) < 0.05
        small = split_documents(n // 2, fraction)[1]
        assert np.array_equal(small, valid[valid < n // 2])


def test_evaluation_does_not_perturb_training(tmp_path):
    off = run_distributed(train_body, 2, args=([f"run.output_dir={tmp_path / 'off'}", "data.valid_fraction=0.1"],),
                          timeout=300)[0]
    on = run_distributed(train_body, 2, args=([f"run.output_dir={tmp_path / 'on'}"] + EVAL,), timeout=300)[0]
    assert sorted(losses(tmp_path / "on", "valid")) == [3, 6, 8]  # every 3 steps and at the end
    for step in off:
        for key in ("loss", "loss/text", "loss/image", "loss/speech", "grad_norm"):
            assert on[step][key] == off[step][key], (step, key)


LAYOUTS = {"dp2-zero3": (2, ["parallel.zero_stage=3"]),
           "tp2-sp": (2, ["parallel.tensor_parallel=2", "parallel.sequence_parallel=true"]),
           "pp2": (2, ["parallel.pipeline_parallel=2"])}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run = tmp_path_factory.mktemp("single")
    run_distributed(train_body, 1, args=([f"run.output_dir={run}"] + EVAL,), timeout=300)
    return losses(run, "valid")


@pytest.mark.parametrize("name", [n if n == "pp2" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in LAYOUTS])  # PP evaluates through its own engine path: default suite
def test_validation_losses_equal_across_layouts(name, single, tmp_path):
    world, extra = LAYOUTS[name]
    run_distributed(train_body, world, args=([f"run.output_dir={tmp_path}"] + EVAL + extra,), timeout=300)
    got = losses(tmp_path, "valid")
    assert sorted(got) == sorted(single) == [3, 6, 8]
    for step, ref in single.items():
        for key in [k for k in ref if k.startswith("valid/loss")]:
            if ref[key] is None:
                assert got[step][key] is None
                continue
            assert abs(got[step][key] - ref[key]) <= 1e-4 * abs(ref[key]), (name, step, key, got[step][key], ref[key])
        assert all(got[step][k] == ref[k] for k in ref if k.startswith("valid/tokens"))


def test_kill_and_resume_with_evaluation_is_exact(tmp_path):
    full = [f"run.output_dir={tmp_path / 'full'}"] + EVAL
    run_distributed(train_body, 2, args=(full,), timeout=300)
    run = [f"run.output_dir={tmp_path / 'killed'}", "checkpoint.interval=4"] + EVAL
    with pytest.raises(DistributedTestError, match="exit code 17"):
        run_distributed(train_body, 2, args=(run,), timeout=300, env={"MOT_FAULT": "kill_after_step:7"})
    run_distributed(train_body, 2, args=(run,), timeout=300)
    for kind in ("train", "valid"):
        a, b = losses(tmp_path / "full", kind), losses(tmp_path / "killed", kind)
        assert sorted(a) == sorted(b)
        for step in a:
            keys = [k for k in a[step] if "loss" in k or k in ("tokens_total", "flops_total")]
            assert all(a[step][k] == b[step][k] for k in keys), (kind, step)


# ------------------------------------------------------------------------------------------------ blending
def test_blend_weights_respected_within_sampling_error():
    order = BlendOrder([1000, 50, 3000], [0.2, 0.3, 0.5], seed=7, chunk=4096)
    docs = np.concatenate([order(e) for e in range(25)])          # ~100k documents
    share = np.bincount(np.searchsorted([0, 1000, 1050, 4050], docs, side="right") - 1, minlength=3) / len(docs)
    sigma = np.sqrt(np.array([0.2 * 0.8, 0.3 * 0.7, 0.5 * 0.5]) / len(docs))
    assert np.all(np.abs(share - [0.2, 0.3, 0.5]) < 4 * sigma), share
    small = docs[(docs >= 1000) & (docs < 1050)]  # the 50-document source cycles through all of its documents
    assert set(small[:50].tolist()) == set(range(1000, 1050))
    assert np.array_equal(order(3), BlendOrder([1000, 50, 3000], [0.2, 0.3, 0.5], seed=7)(3))  # random access


@pytest.mark.parametrize("value", ["0.3 a b", "x a 1 b", "-1 a 1 b", "0 a", [], "nan a 1 b"])
def test_malformed_blends_are_named(value):
    with pytest.raises(ValueError, match="data.path"):
        parse_blend(value, "data.path")
    with pytest.raises(ConfigError, match="data.path"):
        validate(load_config(None, [f"data.path={json.dumps(value)}"]))


def _corpus(prefix, names, docs, seed):
    """`docs` documents; each segment cycles through the corpus's own modality names."""
    rng = np.random.default_rng(seed)
    ranges = {"text": (0, 256), "image": (256, 448), "speech": (448, 512)}
    with IndexedWriter(prefix, np.uint16, multimodal=True) as w:
        for d in range(docs):
            segs = [(rng.integers(*ranges.get(n, (0, 256)), int(rng.integers(3, 40))), i) for i, n in enumerate(names)]
            w.add_document(segs[d % len(segs):] + segs[:d % len(segs)])
        w.close({"modalities": list(names), "vocab_size": 512})
    return prefix


def _blend_cfg(tmp_path, *extra):
    text = _corpus(str(tmp_path / "text"), ["text"], 300, 0)
    pairs = _corpus(str(tmp_path / "pairs"), ["text", "image", "speech"], 200, 1)
    return load_config(None, [f"data.path=0.25 {text} 0.75 {pairs}", "model.modalities=[text,image,speech]",
                              "model.vocab_size=512", "model.max_seq_len=64", *extra])


def _loader(data, **kw):
    settings = LoaderSettings(seq_len=64, micro_batch_size=2, dp_size=2, dp_rank=0, grad_accum=2, seed=3, prefetch=1)
    return MoTDataLoader(data.table, settings, order=data.order, **kw)


def test_blend_resumes_exactly_and_counts_its_sources(tmp_path):
    data = open_datasets(_blend_cfg(tmp_path)).train
    assert data.table.names == ["text", "pairs"]
    loader = _loader(data)
    batches = [next(loader) for _ in range(6)]
    loader.close()
    again = _loader(data)
    for _ in range(3):
        next(again)
    state = json.loads(json.dumps(again.state_dict()))  # checkpoints keep it as JSON
    again.close()
    resumed = _loader(data)
    resumed.load_state_dict(state)
    for want in batches[3:]:
        got = next(resumed)
        assert all((a.tokens == b.tokens).all() for a, b in zip(got.micro_batches, want.micro_batches))
        assert got.source_tokens == want.source_tokens and got.source_docs == want.source_docs
    resumed.close()
    last = batches[-1]
    positions = 6 * (2 * 2) * 2 * 64  # steps x cells (DP x accumulation) x sequences x tokens
    assert 0.9 * positions <= sum(last.source_tokens) <= positions  # every packed token counted once
    assert min(last.source_docs) > 0  # both sources contributed


def test_a_text_only_source_is_normal_and_an_unknown_modality_is_refused(tmp_path):
    cfg = _blend_cfg(tmp_path, "data.valid_fraction=0.1")
    sets = open_datasets(cfg)
    assert sets.valid is not None and len(sets.valid.table.parts) == 2
    for train_part, valid_part in zip(sets.train.table.parts, sets.valid.table.parts):
        assert len(np.intersect1d(train_part.docs, valid_part.docs)) == 0
    odd = _corpus(str(tmp_path / "odd"), ["text", "video"], 10, 2)
    bad = load_config(None, [f"data.path=0.5 {odd} 0.5 {tmp_path / 'text'}", "model.modalities=[text,image,speech]",
                             "model.vocab_size=512"])
    with pytest.raises(DataError, match=r"odd.mot.json.*\['video'\].*model.modalities"):
        open_datasets(bad)


def test_blended_training_logs_each_source(tmp_path):
    cfg = _blend_cfg(tmp_path)
    run = tmp_path / "run"
    run_distributed(train_body, 1, args=([f"run.output_dir={run}", f"data.path={cfg.data.path}",
                                          "train.steps=3"],), timeout=300)
    rec = losses(run)[3]
    assert rec["data/text/tokens"] > 0 and rec["data/pairs/tokens"] > 0
    assert rec["data/text/documents"] + rec["data/pairs/documents"] > 0
    assert os.path.isfile(run / "metrics.jsonl")


def legacy_train_body(overrides):
    """train_body as the code before blend cursors wrote its checkpoints: the stream state without one."""
    from mot_parallel.data.stream import StreamState
    current = StreamState.to_dict

    def without_cursor(self):
        state = current(self)
        state.pop("order_cursor", None)
        return state
    StreamState.to_dict = without_cursor
    return train_body(overrides)


@pytest.mark.slow  # the stream-level cases are in test_blend.py
def test_a_blended_checkpoint_written_before_blend_cursors_resumes_exactly(tmp_path):
    """A checkpoint whose loader state has no blend cursor (older code) resumes by recounting the chunks,
    and the run continues with the uninterrupted run's losses."""
    cfg = _blend_cfg(tmp_path)
    old = tmp_path / "old"
    full = run_distributed(legacy_train_body, 1, args=([f"run.output_dir={old}", f"data.path={cfg.data.path}",
                                                         "train.steps=4", "checkpoint.interval=2"],), timeout=300)[0]
    client = torch.load(old / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt", weights_only=False)
    assert "order_cursor" not in client["loader"]["stream"] and client["loader"]["stream"]["epoch"] >= 0
    resumed = run_distributed(train_body, 1, args=([f"run.output_dir={tmp_path / 'new'}", "train.steps=4",
                                                    f"data.path={cfg.data.path}", "checkpoint.interval=2",
                                                    f"checkpoint.resume={old / 'checkpoints' / 'step_00000002'}"],),
                              timeout=300)[0]
    assert sorted(resumed) == [3, 4] and all(resumed[s]["loss"] == full[s]["loss"] for s in (3, 4))
