"""The preflight: what needs files (the corpus, checkpoint.resume) is checked after validate() and before
any process group, every problem listed in one message; launch/pretrain.py turns it (and the Trainer's
CheckpointError/DataError) into one `error:` line. A corpus with token ids past the vocabulary used to
train with loss inf and save a checkpoint: now nothing starts."""
import importlib.util
import os

import numpy as np
import pytest
import torch.distributed as dist

from mot_parallel.config import ConfigError, load_config, validate
from mot_parallel.data import DataError, IndexedWriter
from mot_parallel.data.from_config import check_data, open_corpus
from mot_parallel.data.token_ids import CACHE_SUFFIX
from mot_parallel.preflight import preflight
from mot_parallel.testing import DistributedTestError, run_distributed
from train_utils import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus(prefix, docs, vocab=None, modalities=("text", "image", "speech")):
    with IndexedWriter(str(prefix), np.uint16) as w:
        for doc in docs:
            w.add_document([(np.asarray(t), m) for t, m in doc])
        w.close(None if vocab is None else {"modalities": list(modalities), "vocab_size": vocab})
    return str(prefix)


GOOD = [[(np.arange(1, 30), 0), (np.arange(100, 140), 1)], [(np.arange(200, 260), 2), (np.arange(5, 9), 0)]] * 20


def bad_ids(tmp_path):
    docs = list(GOOD)
    docs[7] = [(np.array([1, 2, 3, 520, 4]), 0)]  # 520: inside the padded vocabulary (576), past vocab_size 512
    return corpus(tmp_path / "bad", docs)


def cfg_for(tmp_path, *overrides):
    return load_config(None, TINY + [f"run.output_dir={tmp_path / 'run'}", *overrides])


def _pretrain_main():
    spec = importlib.util.spec_from_file_location("_pretrain", os.path.join(ROOT, "launch", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _not_started(run_dir):
    assert not (dist.is_available() and dist.is_initialized()), "no process group may exist"
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "latest"))


def test_every_file_problem_is_listed_before_any_process_group(tmp_path):
    prefix = corpus(tmp_path / "c", GOOD, vocab=512)
    cfg = cfg_for(tmp_path, f"data.path={prefix}.bin", f"checkpoint.resume={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError) as e:
        preflight(cfg, validate(cfg, 1))
    msg = str(e.value)
    assert f"give its prefix: data.path={prefix}" in msg, msg
    assert f"checkpoint.resume={tmp_path / 'nowhere'}: no checkpoint there" in msg, msg
    _not_started(tmp_path / "run")


@pytest.mark.parametrize("overrides,words", [
    (["data.path={tmp}/missing"], ["data.path={tmp}/missing has no corpus", "missing.bin and", "preprocess_data"]),
    (["data.path={tmp}"], ["is a directory"]),
    (["data.path={big}"], ["corpus vocabulary 1000 exceeds model.vocab_size=512", "model.vocab_size >= 1000"]),
    (["data.path={two}"], ["holds modalities ['video'] that model.modalities", "lacks"]),
    (["data.path={bad}"], ["bad.bin: document 7 has token id 520 at position 3", "model.vocab_size >= 521"]),
    (["data.path=demo", "model.modalities=[text,image]"], ["demo corpus", "model.modalities"]),
])
def test_corpus_that_does_not_fit_the_model(tmp_path, overrides, words):
    files = {"tmp": str(tmp_path), "big": corpus(tmp_path / "big", GOOD, vocab=1000),
             "two": corpus(tmp_path / "two", [[(np.arange(9), 0)]], vocab=512, modalities=("text", "video")),
             "bad": bad_ids(tmp_path)}
    cfg = cfg_for(tmp_path, *[o.format(**files) for o in overrides])
    with pytest.raises(ConfigError) as e:
        preflight(cfg, validate(cfg, 1))
    for w in words:
        assert w.format(**files) in str(e.value), str(e.value)


def test_only_rank_0_scans_the_corpus(tmp_path):
    """Other ranks check metadata (no concurrent scans of the same files); rank 0 scans and caches."""
    prefix = bad_ids(tmp_path)
    cfg = cfg_for(tmp_path, f"data.path={prefix}")
    check_data(cfg, full=False)
    assert not os.path.exists(prefix + CACHE_SUFFIX)
    with pytest.raises(DataError, match="document 7"):
        check_data(cfg, full=True)
    assert os.path.exists(prefix + CACHE_SUFFIX)


@pytest.mark.parametrize("docs,words", [([], "the corpus has no tokens"), ([[]] * 3, "the corpus has no tokens"),
                                        ([[(np.array([4]), 0)]] * 5, "every document has a single token")])
def test_corpus_with_nothing_to_learn(tmp_path, docs, words):
    cfg = cfg_for(tmp_path, f"data.path={corpus(tmp_path / 'c', docs)}")
    with pytest.raises(DataError, match=words):
        open_corpus(cfg)


def test_pretrain_refuses_out_of_vocabulary_ids_before_training(tmp_path, capsys):
    """The reported failure, end to end through the entry point: one `error:` line, nothing trained or saved."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        _pretrain_main()(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), *TINY,
                          f"data.path={bad_ids(tmp_path)}", f"run.output_dir={run_dir}"])
    assert str(e.value.code).startswith("error: cannot start:") and "document 7 has token id 520" in str(e.value.code)
    _not_started(run_dir)


def test_pretrain_refuses_deepspeed_keys_that_contradict_the_layout(tmp_path):
    with pytest.raises(SystemExit) as e:
        _pretrain_main()(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), *TINY,
                          "deepspeed={train_batch_size: 32}", f"run.output_dir={tmp_path}"])
    assert "deepspeed.train_batch_size=32 contradicts train.global_batch_size (which gives 4)" in str(e.value.code)
    _not_started(tmp_path)


def test_pretrain_check_refuses_an_unknown_nested_deepspeed_key(tmp_path):
    """DeepSpeed's own config model runs in validation: the key is named before any process group exists."""
    with pytest.raises(SystemExit) as e:
        _pretrain_main()(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--check", *TINY,
                          "deepspeed={zero_optimization: {stagee: 2}}", f"run.output_dir={tmp_path}"])
    assert "deepspeed.zero_optimization.stagee" in str(e.value.code)
    _not_started(tmp_path)


def test_a_missing_validation_corpus_is_named_as_such(tmp_path):
    cfg = cfg_for(tmp_path, f"data.valid_path={tmp_path / 'nowhere'}", "data.valid_fraction=0")
    with pytest.raises(ConfigError, match=r"data.valid_path=\S*nowhere has no corpus"):
        preflight(cfg, validate(cfg, 1))


def test_pretrain_check_only(tmp_path, capsys):
    _pretrain_main()(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), *TINY, "train.global_batch_size=2",
                      f"run.output_dir={tmp_path}", "--check"])
    assert capsys.readouterr().out.startswith("ok:")
    _not_started(tmp_path)


def test_trainer_checkpoint_error_is_one_line(tmp_path, monkeypatch):
    """The Trainer resolves the resume target itself: its CheckpointError is an `error:` line, no traceback."""
    from mot_parallel import training
    from mot_parallel.training.checkpoint_files import CheckpointError

    def refuse(*args, **kwargs):
        raise CheckpointError(f"{tmp_path}/step_00000004/checkpoint.json: missing")
    monkeypatch.setattr(training, "Trainer", refuse)
    with pytest.raises(SystemExit) as e:
        _pretrain_main()(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), *TINY,
                          "train.global_batch_size=2", f"run.output_dir={tmp_path}"])
    assert e.value.code == f"error: {tmp_path}/step_00000004/checkpoint.json: missing"


def _trainer_body(overrides):
    from mot_parallel.training import Trainer
    Trainer(load_config(None, TINY + list(overrides)))


def test_trainer_itself_refuses_the_corpus(tmp_path):
    """Scripts that build the Trainer directly (bench_train, profile_step, a user's own) get the same check."""
    with pytest.raises(DistributedTestError, match="document 7 has token id 520"):
        run_distributed(_trainer_body, 1, args=([f"data.path={bad_ids(tmp_path)}", "train.global_batch_size=2",
                                                 f"run.output_dir={tmp_path / 'run'}"],), timeout=120)
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
