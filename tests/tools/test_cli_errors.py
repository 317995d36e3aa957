"""Every command-line tool (tools/*.py, launch/*.py, python -m mot_parallel.config) answers bad input with exactly
one `error:` line naming the argument (or the file or key), a non-zero exit, no traceback, and nothing written.

ARGUMENTS lists, for every argparse argument of every tool and subcommand, the kinds of bad value it must refuse
(zero, negative, nan, inf, huge, wrong type, a missing path, a file where a directory belongs and the reverse, an
output that cannot be created or already exists); `test_every_argument_has_a_row` fails on an argument without a
row, so a new argument joins the table. Each case runs the tool's main() in-process (argparse and the tools' own
checks run before anything heavy starts; an exception other than SystemExit fails the case with its traceback,
and a case still running after 30 s means a bad value was accepted and work began); the entry points users meet
first also run as real processes. BAD_FILES holds bad file contents (not UTF-8, nesting too deep, huge ids)."""
import argparse
import importlib.util
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "configs", "demo_cpu.yaml")
LAUNCH = ("pretrain", "submit", "megatron_example")
TOOLS = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "tools"))  # scripts with a main(), not helper modules
               if n.endswith(".py") and "\ndef main(" in open(os.path.join(ROOT, "tools", n)).read()) + list(LAUNCH)
_MODULES = {}


def _main(name):
    if name not in _MODULES:
        path = os.path.join(ROOT, "launch" if name in LAUNCH else "tools", name + ".py")
        spec = importlib.util.spec_from_file_location(f"_cli_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # workers of a multiprocessing pool find the tool's functions by module name
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name].main


# ------------------------------------------------------------------------------------------ the bad values
VALUES = {"zero": "0", "one": "1", "negative": "-1", "huge": "1" + "0" * 30, "word": "x", "float": "2.5",
          "nan": "nan", "inf": "inf", "above_one": "1.5", "choice": "nope", "override": "train.no_such=1",
          "missing": "{tmp}/nope", "file": "{tmp}/a_file", "dir": "{tmp}/a_dir", "under_file": "{tmp}/a_file/out",
          "existing_dir": "{tmp}/users_dir", "existing_prefix": "{tmp}/users_corpus",
          "existing_png": "{tmp}/users.png", "not_png": "{tmp}/plot.pdf", "dir_png": "{tmp}/a_dir.png",
          "under_file_png": "{tmp}/a_file/plot.png"}
PATHS = {"missing", "file", "dir", "under_file", "existing_dir", "existing_prefix", "existing_png", "not_png",
         "dir_png", "under_file_png"}  # the message may name the path instead of the flag
POSITIVE = ("zero", "negative", "huge", "word", "float")
NON_NEGATIVE = ("negative", "huge", "word", "float")
SEED = ("negative", "huge", "word", "float")
POSITIVE_FLOAT = ("zero", "negative", "nan", "inf", "word")
EFFICIENCY = ("zero", "negative", "nan", "inf", "word", "above_one")
FRACTION = ("negative", "nan", "inf", "word", "above_one")
CONFIG = ("missing", "dir", "file")
IN_FILE = ("missing", "dir")
IN_DIR = ("missing", "file")
OUT_DIR = ("existing_dir", "under_file", "file")
OUT_PNG = ("existing_png", "not_png", "dir_png", "under_file_png")
OUT_PREFIX = ("existing_prefix", "under_file")
CHOICE = ("choice",)
OVERRIDES = ("override",)
FLAG = ()  # takes no value
FREE = ()  # any text is a value: a label, a name checked against what the tool reads (tested with those files)

# the arguments a valid run of each tool or subcommand needs; the value under test is appended ("{x}": files)
BASE = {
    "balance_report": ["--steps", "1", "--documents", "100"],
    "bench_checkpoint_hash": ["--sample-mib", "1", "--dir", "{tmp}"],
    "bench_layer": [],
    "bench_loader": ["--config", DEMO],
    "bench_preprocess": ["--documents", "10", "--pairs", "2"],
    "bench_train": ["--config", DEMO, "--steps", "2", "--skip", "0"],
    "bench_sampling": ["--config", os.path.join(ROOT, "configs", "demo_transfusion_cpu.yaml"), "--repeat", "1"],
    "build_real_corpus": ["--output-prefix", "{tmp}/real/r"],
    "compare_runs": ["{run}", "{run}"],
    "convert_checkpoint hf-to-mot": ["hf-to-mot", "--hf", "{a_dir}", "--out", "{tmp}/u_new", "--modalities", "text"],
    "convert_checkpoint to-universal": ["to-universal", "--config", DEMO, "--checkpoint", "{ckpt}", "--out",
                                        "{tmp}/u_new"],
    "convert_checkpoint from-universal": ["from-universal", "--config", DEMO, "--universal", "{a_dir}"],
    "convert_checkpoint reshard": ["reshard", "--config", DEMO, "--checkpoint", "{ckpt}", "--run-dir",
                                   "{tmp}/reshard_new", "--src", "parallel.tensor_parallel=1"],
    "convert_checkpoint to-hf": ["to-hf", "--universal", "{a_dir}", "--modality", "text", "--out", "{tmp}/hf_new"],
    "convert_checkpoint export": ["export", "--universal", "{a_dir}", "--out", "{tmp}/export_new"],
    "convert_checkpoint to-megatron": ["to-megatron", "--universal", "{a_dir}", "--out", "{tmp}/megatron_new"],
    "fidelity_study": ["{suite}", "--dry-run", "--out", "{tmp}/study_new"],
    "flops": ["--config", DEMO],
    "gpu_check": ["--cpu-smoke", "--out", "{tmp}/gc_new", "--work-dir", "{tmp}/gc_work_new"],
    "inspect_corpus": ["--corpus", "{corpus}"],
    "make_demo_corpus": ["--output-prefix", "{tmp}/demo_new/d"],
    "plan": ["--config", DEMO],
    "preprocess_data": ["--input", "{good_jsonl}", "--output-prefix", "{tmp}/pp_new/c", "--modalities", "text",
                        "image", "--vocab-size", "512"],
    "profile_step": ["--config", DEMO, "--out", "{tmp}/prof_new"],
    "sample": ["--checkpoint", "{a_dir}", "--score", "1"],
    "pretrain": ["--config", DEMO, "--dry-run"],
    "submit": ["--config", DEMO, "--no-submit", "run.output_dir={tmp}/submit_new"],
    "megatron_example": ["--out", "{tmp}/megatron_run_new"],
}
POSITIONAL_DEFAULTS = {"suite": "grid"}  # "{suite}" in BASE: replaced by the bad value in the suite's own row

# argument -> kinds of bad value ("=text": that literal value; "=a|b": the tokens a b of a multi-value flag)
ARGUMENTS = {
    "balance_report": {
        "--config": CONFIG, "--docs": IN_FILE, "--mix": CHOICE, "--dp": POSITIVE, "--micro-batches": POSITIVE,
        "--micro-batch-size": POSITIVE, "--seq-len": POSITIVE + ("one",), "--steps": POSITIVE,
        "--documents": POSITIVE, "--seed": SEED, "--json": FLAG, "--plot": OUT_PNG, "--overwrite": FLAG,
        "--scaling": POSITIVE},
    "bench_checkpoint_hash": {"--config": CONFIG, "--world-size": POSITIVE + ("=3",),
                              "--sample-mib": POSITIVE + ("=100000",), "--dir": ("missing", "file"), "--json": FLAG},
    "bench_preprocess": {"--documents": POSITIVE + ("=100000000",), "--pairs": POSITIVE + ("=100000000",),
                         "--workers": POSITIVE + ("=2000",), "--json": FLAG},
    "bench_layer": {
        "--hidden": POSITIVE, "--heads": POSITIVE + ("=3",), "--kv-heads": POSITIVE + ("=3",), "--ffn": POSITIVE,
        "--seq": POSITIVE, "--batch": POSITIVE, "--modalities": POSITIVE, "--rounds": POSITIVE,
        "--split": ("word", "nan", "=0.5,0.4", "=-0.5,1.5"), "--warmup": NON_NEGATIVE, "--dtype": CHOICE,
        "--device": CHOICE, "--no-naive": FLAG, "--peak-tflops": POSITIVE_FLOAT, "--json": FLAG},
    "bench_loader": {"--config": CONFIG, "--steps": POSITIVE, "--dp": POSITIVE, "--json": FLAG,
                     "overrides": OVERRIDES, "--simulate": FLAG, "--mix": CHOICE, "--documents": POSITIVE,
                     "--micro-batches": POSITIVE, "--micro-batch-size": POSITIVE, "--seq-len": POSITIVE,
                     "--host-ms": ("negative", "nan", "inf", "word"), "--device-ms": ("negative", "nan", "inf", "word")},
    "bench_sampling": {"--config": CONFIG, "--pictures": POSITIVE, "--repeat": POSITIVE, "--json": FLAG,
                       "overrides": OVERRIDES},
    "bench_train": {"--config": CONFIG, "--nproc": POSITIVE, "--steps": POSITIVE, "--skip": NON_NEGATIVE + ("=2",),
                    "--eval-iters": NON_NEGATIVE, "--json": FLAG, "overrides": OVERRIDES},
    "build_real_corpus": {
        "--output-prefix": OUT_PREFIX, "--documents": POSITIVE, "--seed": SEED, "--text-vocab": POSITIVE + ("=100",),
        "--speech-units": POSITIVE + ("one",), "--calibration-utterances": POSITIVE + ("one",),
        "--workers": POSITIVE, "--espeak": ("missing",), "--force": FLAG, "--overwrite": FLAG, "--json": FLAG},
    "compare_runs": {"run_dirs": ("missing", "file"), "--labels": ("=a",), "--json": FLAG,
                     "--plot": OUT_PNG + ("={run}/plot.png",), "--overwrite": FLAG},
    "convert_checkpoint hf-to-mot": {
        "--hf": ("missing",), "--out": OUT_DIR + ("={a_dir}/inside",), "--modalities": FREE, "--config": CONFIG,
        "overrides": OVERRIDES, "--overwrite": FLAG},
    "convert_checkpoint to-universal": {
        "--config": CONFIG, "--checkpoint": ("missing",), "--out": OUT_DIR + ("={tmp}/ckpt_run",),
        "--nproc": POSITIVE, "overrides": OVERRIDES, "--overwrite": FLAG},
    "convert_checkpoint from-universal": {"--config": CONFIG, "--universal": ("missing",), "--nproc": POSITIVE,
                                          "overrides": OVERRIDES},
    "convert_checkpoint reshard": {
        "--config": CONFIG, "--checkpoint": ("missing",), "--src": OVERRIDES, "--dst": OVERRIDES,
        "--run-dir": OUT_DIR + ("={ckpt}/inside",), "--overwrite": FLAG},
    "convert_checkpoint to-hf": {"--universal": ("missing",), "--modality": FREE, "--out": OUT_DIR + ("={a_dir}",),
                                 "--dtype": CHOICE, "--overwrite": FLAG},
    "convert_checkpoint export": {"--universal": ("missing",), "--out": OUT_DIR + ("={a_dir}/inside",),
                                  "--dtype": CHOICE, "--overwrite": FLAG},
    "convert_checkpoint to-megatron": {"--universal": ("missing",), "--out": OUT_DIR + ("={tmp}",),
                                       "--overwrite": FLAG},
    "fidelity_study": {
        "suite": CHOICE, "--corpus": CHOICE, "--rows": ("=dense,nope",), "--seeds": SEED, "--steps": POSITIVE,
        "--every-seed": ("=nope",), "--out": OUT_DIR, "--nproc": POSITIVE, "--max-load": POSITIVE_FLOAT,
        "--report": FLAG, "--dry-run": FLAG},
    "flops": {"--config": CONFIG, "--json": FLAG, "overrides": OVERRIDES + ("=model.num_heads=3",)},
    "gpu_check": {
        "--out": OUT_DIR, "--work-dir": OUT_DIR + ("={tmp}/gc_new", "={tmp}/gc_new/w"), "--cpu-smoke": FLAG, "--parts": ("=device,nope",),
        "--budget-s": ("negative", "nan", "inf", "word", "huge"), "--wheels": IN_DIR, "--prepare-wheels": OUT_DIR,
        "--python-version": ("word", "=2"), "--overwrite": FLAG},
    "inspect_corpus": {
        "--corpus": ("missing", "dir"), "--doc": NON_NEGATIVE + ("=999",), "--json": FLAG, "--overwrite": FLAG,
        "--out": OUT_DIR + ("={corpus_dir}", "={corpus}.bin", "={corpus}.idx/x"), "--tokenizer": ("missing",),
        "--image-tokenizer": ("missing", "file"), "--vae": ("missing", "file")},
    "make_demo_corpus": {"--output-prefix": OUT_PREFIX, "--jsonl": ("file", "dir", "under_file"),
                         "--documents": POSITIVE, "--seed": SEED, "--variant": CHOICE, "--overwrite": FLAG},
    "plan": {
        "--config": CONFIG, "--gpus": POSITIVE + ("=3",), "--gpu": CHOICE, "--top": POSITIVE, "--json": FLAG,
        "--memory-gb": POSITIVE_FLOAT, "--peak-tflops": POSITIVE_FLOAT, "--hbm-gbps": POSITIVE_FLOAT,
        "--nvlink-gbps": POSITIVE_FLOAT, "--inter-gbps": POSITIVE_FLOAT, "--gemm-efficiency": EFFICIENCY,
        "--attention-efficiency": EFFICIENCY, "--dp-overlap": FRACTION, "--reserve-gb": ("negative", "nan", "inf",
                                                                                          "word", "=100"),
        "--gpus-per-node": POSITIVE, "--storage-gbps": POSITIVE_FLOAT, "overrides": OVERRIDES},
    "preprocess_data": {
        "--input": IN_FILE, "--output-prefix": OUT_PREFIX, "--overwrite": FLAG,
        "--config": CONFIG, "--modalities": ("=text|text",), "--vocab-size": POSITIVE + ("=3000000000",),
        "--workers": POSITIVE, "--chunk": POSITIVE, "--continuous": ("=video",), "--source": CHOICE,
        "--vae": ("missing",), "--image-size": POSITIVE, "--patch": POSITIVE, "--channels": POSITIVE,
        "--grid": POSITIVE, "--boi-token": NON_NEGATIVE, "--eoi-token": NON_NEGATIVE, "--continuous-dtype": CHOICE,
        "--vae-batch": POSITIVE, "--tokenizer": ("missing", "file", "dir"), "--tokenizer-type": CHOICE,
        "--json-keys": ("=text:video", "=,text"), "--append-eod": FLAG, "--eod-token": ("=5", "word"),
        "--image-tokenizer": ("missing", "file", "dir"), "--image-modality": ("=video", "=text"),
        "--codebook-size": ("=image", "=image=0", "=image=x", "=video=4")},
    "profile_step": {"--config": CONFIG, "--nproc": POSITIVE, "--steps": POSITIVE, "--warmup": NON_NEGATIVE,
                     "--out": OUT_DIR, "--overwrite": FLAG, "--json": FLAG, "overrides": OVERRIDES},
    "sample": {
        "--checkpoint": IN_DIR, "--caption": ("=purple unicorn",), "--caption-ids": ("word", "=3,x", "negative"),
        "--prompt": ("=zzz",), "--prompt-ids": ("word", "=1,,2"), "--tokens": POSITIVE, "--score": POSITIVE, "--probe": POSITIVE,
        "--score-captions": CHOICE, "--batch": POSITIVE, "--steps": POSITIVE, "--cfg": ("nan", "inf", "negative", "word", "=1000"), "--seed": SEED, "--vae": IN_DIR,
        "--out": OUT_PNG + ("={a_dir}/x.png",), "--trajectory": OUT_PNG + ("={a_dir}/x.png",), "--overwrite": FLAG,
        "--json": FLAG,
        "--corpus": ("missing", "={corpus}"), "--tokenizer": ("missing", "file")},
    "pretrain": {"--config": CONFIG, "--check": FLAG, "--dry-run": FLAG, "--world-size": POSITIVE,
                 "--rank": NON_NEGATIVE + ("=5",), "--all-ranks": FLAG, "overrides": OVERRIDES},
    "submit": {
        "--config": CONFIG, "--nodes": POSITIVE, "--gpus-per-node": NON_NEGATIVE + ("=100",),
        "--procs-per-node": POSITIVE, "--cpus-per-task": POSITIVE, "--time": ("word", "=1:2:3:4"),
        "--partition": FREE, "--account": FREE, "--mode": CHOICE, "--python": FREE, "--no-submit": FLAG,
        "overrides": OVERRIDES},
    "megatron_example": {"--tp": POSITIVE, "--steps": POSITIVE, "--out": OUT_DIR, "--overwrite": FLAG},
}


def _cases():
    for command, rows in ARGUMENTS.items():
        for arg, kinds in rows.items():
            for kind in kinds:
                yield pytest.param(command, arg, kind, id=f"{command} {arg} {kind.lstrip('=')}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "a_file").write_text("x")
    (tmp / "a_dir").mkdir()
    (tmp / "a_dir" / "something").write_text("x")
    (tmp / "a_dir.png").mkdir()
    (tmp / "users_dir").mkdir()
    (tmp / "users_dir" / "notes.txt").write_text("mine")
    (tmp / "users.png").write_bytes(b"\x89PNG\r\n\x1a\n not ours")
    (tmp / "users_corpus.bin").write_bytes(b"mine")
    (tmp / "good.jsonl").write_text('{"segments": [{"modality": "text", "tokens": [1, 2, 3]}]}\n')
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  modalities: [text]\n  untie: []\n")
    (run / "metrics.jsonl").write_text("".join(
        f'{{"kind": "valid", "step": {s}, "valid/loss": {3 - s}, "tokens_total": {s}, "flops_total": {s}, '
        f'"train_time_s": {s}}}\n' for s in (1, 2)))
    from mot_parallel.corpus_building.demo_corpus import write_demo_corpus
    (tmp / "corpus").mkdir()
    corpus = write_demo_corpus(str(tmp / "corpus" / "demo"), 4)  # a demo corpus: its sidecar names no tokenizer
    ckpt = tmp / "ckpt_run" / "checkpoints"
    (ckpt / "step_00000002").mkdir(parents=True)
    (ckpt / "step_00000002" / "checkpoint.json").write_text("{}")
    return {"tmp": str(tmp), "a_dir": str(tmp / "a_dir"), "good_jsonl": str(tmp / "good.jsonl"), "run": str(run),
            "ckpt": str(ckpt), "corpus": corpus, "corpus_dir": str(tmp / "corpus")}


def _tree(top):
    """Every path under `top` with its size and modification time: what a case must leave unchanged."""
    out = {}
    for d, dirs, names in os.walk(top):
        for n in dirs + names:
            st = os.lstat(os.path.join(d, n))
            out[os.path.relpath(os.path.join(d, n), top)] = (st.st_size, st.st_mtime_ns)
    return out


class _TooLong(BaseException):  # not an Exception: a tool's `except Exception` must not swallow it
    pass


def _alarm(signum, frame):
    raise _TooLong("still running after 30 s: a bad value was accepted and work started")


def fails_cleanly(name, argv, capsys, monkeypatch, tmp, words=(), any_of=()):
    """Run a tool's main on argv in a scratch working directory: it must exit non-zero with exactly one `error:`
    line, its message (that line and the lines under it, as in 'invalid config:' lists) holding each of `words`
    (and one of `any_of`), no traceback, and write nothing under `tmp` or there."""
    monkeypatch.chdir(tmp)
    before = _tree(tmp)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        with pytest.raises(SystemExit) as e:
            _main(name)(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    code, err = e.value.code, capsys.readouterr().err
    text = err + (code if isinstance(code, str) else "")
    lines = [line for line in text.splitlines() if "error:" in line]
    assert code not in (0, None), f"{name} {argv}: exit status {code!r}"
    assert len(lines) == 1 and "Traceback" not in text, text
    message = text[text.index(lines[0]):]
    for w in words:
        assert w in message, f"{name}: {w!r} not in {message!r}"
    assert not any_of or any(w in message for w in any_of), f"{name}: none of {any_of} in {message!r}"
    assert _tree(tmp) == before, f"{name} {argv} wrote {set(_tree(tmp)) ^ set(before)}"
    return message


@pytest.mark.parametrize("command,arg,kind", list(_cases()))
def test_bad_argument_value_is_one_error_line(command, arg, kind, files, capsys, monkeypatch):
    tool = command.split()[0]
    value = (kind[1:] if kind.startswith("=") else VALUES[kind]).format(**files)
    fill = dict(files, **POSITIONAL_DEFAULTS)
    if arg in POSITIONAL_DEFAULTS:
        fill[arg] = value
    argv = [a.format(**fill) for a in BASE[command]]
    if arg not in POSITIONAL_DEFAULTS:
        argv += ([arg] if arg.startswith("-") else []) + value.split("|")
    names = [arg] + ([value] if kind in PATHS or kind.startswith("=") or not arg.startswith("-") else [])
    names += [value.split("=")[0]] if kind == "override" else []
    fails_cleanly(tool, argv, capsys, monkeypatch, files["tmp"], any_of=names)


def _parsers(tool):
    """(command, parser) of a tool and each of its subcommands, read by stopping main() at parse_args."""
    class Parsed(Exception):
        pass

    def stop(parser, *args, **kwargs):
        raise Parsed(parser)
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = stop
    try:
        _main(tool)([])
    except Parsed as p:
        parser = p.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    out = [(tool, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out = [(f"{tool} {name}", sub) for name, sub in action.choices.items()]
    return out


def _arguments(parser):
    return {a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help != argparse.SUPPRESS}


@pytest.mark.parametrize("tool", TOOLS)
def test_every_argument_has_a_row(tool):
    """A new argument (or tool, or subcommand) joins ARGUMENTS; a row for an argument that is gone is an error."""
    for command, parser in _parsers(tool):
        assert command in ARGUMENTS and command in BASE, f"{command}: no rows in ARGUMENTS / BASE"
        have = _arguments(parser)
        assert set(ARGUMENTS[command]) == have, (f"{command}: arguments without a row {have - set(ARGUMENTS[command])}, "
                                                 f"rows without an argument {set(ARGUMENTS[command]) - have}")


# ------------------------------------------------------------------------------------------ bad files and configs
@pytest.fixture(scope="module")
def bad_files(files):
    tmp = files["tmp"]
    contents = {"latin1.yaml": b"model:\n  hidden_size: 64\n# caf\xe9\n",
                "nan.yaml": b"model:\n  max_seq_len: 1\ntrain:\n  optimizer:\n    lr: .nan\n",
                "latin1.jsonl": b'{"segments": [{"modality": "text", "tokens": [1, 2]}]}\n\xff\xfe\n',
                "huge.jsonl": b'{"segments": [{"modality": "text", "tokens": [1, %d]}]}\n' % 10 ** 30,
                "deep.jsonl": b"[" * 100000 + b"]" * 100000 + b"\n",
                "profiles.jsonl": b'{"segments": [["text", 10]]}\n\xff\n',
                "profiles_huge.jsonl": b'{"segments": [["text", %d]]}\n' % 10 ** 30}
    for name, data in contents.items():
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(tmp, "vae_dir"), exist_ok=True)
    return dict(files, latin1=os.path.join(tmp, "latin1.yaml"), nan=os.path.join(tmp, "nan.yaml"))


CONFIG_COMMANDS = {  # argv before and after --config <file>
    "balance_report": ([], []), "bench_loader": ([], []), "bench_train": ([], ["--steps", "2", "--skip", "0"]),
    "flops": ([], []), "plan": ([], []), "profile_step": ([], []), "pretrain": ([], []), "submit": ([], []),
    "preprocess_data": (["--input", "{good_jsonl}", "--output-prefix", "{tmp}/out/c"], []),
    "convert_checkpoint": (["from-universal"], ["--universal", "{a_dir}"]),
    "bench_checkpoint_hash": ([], ["--sample-mib", "1", "--dir", "{tmp}"]),
    "bench_sampling": ([], ["--repeat", "1"]),
}
BAD_CONFIG_WORDS = {"latin1": ["not UTF-8", "line 3"], "nan": ["train.optimizer.lr=nan", "model.max_seq_len=1"]}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIG_WORDS))
@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_bad_config_file_is_one_error_line(name, kind, bad_files, capsys, monkeypatch):
    before, after = CONFIG_COMMANDS[name]
    argv = [a.format(**bad_files) for a in before] + ["--config", bad_files[kind]] + \
        [a.format(**bad_files) for a in after]
    fails_cleanly(name, argv, capsys, monkeypatch, bad_files["tmp"], BAD_CONFIG_WORDS[kind])


TI = ["--input", "{good_jsonl}", "--modalities", "text", "image", "--vocab-size", "512"]
BAD_FILES = [
    ("preprocess_data", ["--input", "{tmp}/latin1.jsonl", "--modalities", "text", "--vocab-size", "512"],
     ["latin1.jsonl:2", "not UTF-8"]),
    ("preprocess_data", ["--input", "{tmp}/huge.jsonl", "--modalities", "text", "--vocab-size", "512"],
     ["huge.jsonl:1", "tokens[1]=" + str(10 ** 30)]),
    ("preprocess_data", ["--input", "{tmp}/deep.jsonl", "--modalities", "text", "--vocab-size", "512"],
     ["deep.jsonl:1"]),
    # continuous (image) modalities: options that cannot describe one, a VAE directory that is not one
    ("preprocess_data", TI + ["--continuous", "image", "--vae", "{tmp}/vae_dir", "--patch", "2"],
     ["--vae", "no config.json", "not a diffusers AutoencoderKL"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--image-size", "30", "--patch", "4"],
     ["--image-size 30 30", "multiple of 4"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--image-size", "40000", "--patch", "4"],
     ["--image-size", "exceeds 8192"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "latents", "--channels", "4", "--patch", "2",
                              "--grid", "9000"], ["--grid", "exceeds 8192"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--image-size", "8", "--patch", "4",
                              "--boi-token", "600"], ["boi token 600", "outside the vocabulary"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--channels", "4", "--patch", "4",
                              "--image-size", "8"], ["--channels gives 4", "RGB pixels gives 3"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "latents", "--patch", "2"], ["--channels"]),
    # your own data: a tokenizer that is not there, options that cannot describe a layout
    ("preprocess_data", ["--input", "{good_jsonl}", "--tokenizer", "{tmp}/nowhere"], ["--tokenizer", "nowhere"]),
    ("preprocess_data", TI + ["--codebook-size", "image"], ["--codebook-size image", "MODALITY=SIZE"]),
    ("preprocess_data", TI + ["--json-keys", "text:video"], ["--json-keys text:video", "not one of"]),
    ("preprocess_data", TI + ["--json-keys", "text:"], ["--json-keys text:", "FIELD[,FIELD...][:MODALITY]"]),
    ("preprocess_data", TI + ["--eod-token", "5"], ["--eod-token", "--tokenizer"]),
    ("preprocess_data", TI + ["--image-tokenizer", "{a_dir}"], ["--image-tokenizer", "no config.json", "VQModel"]),
    ("preprocess_data", TI + ["--image-tokenizer", "{tmp}"], ["--output-prefix", "lies inside the input", "(--image-tokenizer)"]),
    ("preprocess_data", TI + ["--tokenizer", "{tmp}"], ["--output-prefix", "lies inside the input", "(--tokenizer)"]),
    ("inspect_corpus", ["--corpus", "{tmp}/nowhere"], ["nowhere.idx", "not found"]),
    ("balance_report", ["--docs", "{tmp}/profiles.jsonl"], ["profiles.jsonl:2", "UTF-8", "0xff"]),
    ("balance_report", ["--docs", "{tmp}/profiles_huge.jsonl"], ["profiles_huge.jsonl:1"]),
    ("build_real_corpus", ["--output-prefix", "{tmp}/real/r", "--espeak", "no-such-espeak-program"], ["espeak-ng"]),
    ("gpu_check", ["--parts", "no_such_part", "--out", "{tmp}/gc_new"], ["unknown part"]),
    # a config the trainer could not use: named before any worker process starts (it was a worker's traceback)
    ("convert_checkpoint", ["to-universal", "--config", DEMO, "--checkpoint", "{ckpt}", "--out", "{tmp}/u_new",
                            "parallel.tensor_parallel=1", "data.path={tmp}/nowhere"], ["data.path=", "has no corpus"]),
    ("balance_report", ["--scaling", "8,x"], ["--scaling", "'8,x'"]),
    ("balance_report", ["--scaling", "8,0"], ["--scaling", "positive integers"]),
    ("balance_report", ["--scaling", "8", "--dp", "4"], ["--scaling 8", "--dp"]),
    ("balance_report", ["--scaling", "8", "--plot", "{tmp}/p.png"], ["--scaling 8", "--plot"]),
    ("balance_report", ["--scaling", "999999"], ["--scaling", "999999"]),
    ("bench_loader", [], ["--config", "--simulate"]),
    ("bench_loader", ["--simulate", "--host-ms", "-1"], ["--host-ms"]),
    ("bench_loader", ["--simulate", "--device-ms", "nan"], ["--device-ms"]),
    ("bench_loader", ["--simulate", "--config", os.path.join(ROOT, "configs", "demo_cpu.yaml")],
     ["--simulate", "--config"]),
    ("bench_loader", ["--simulate", "--dp", "60000", "--seq-len", "1000000"], ["--dp 60000", "2**34"]),
]


@pytest.mark.parametrize("name,argv,words", BAD_FILES, ids=[f"{n} {' '.join(a)}" for n, a, _ in BAD_FILES])
def test_bad_input_file_is_one_error_line(name, argv, words, bad_files, capsys, monkeypatch):
    argv = [a.format(**bad_files) for a in argv]
    if name == "preprocess_data":
        argv += ["--output-prefix", os.path.join(bad_files["tmp"], "out", "c")]
    fails_cleanly(name, argv, capsys, monkeypatch, bad_files["tmp"], words)


# ------------------------------------------------------------------------------------------ real processes
@pytest.mark.parametrize("command", [["launch/pretrain.py", "--config", "{a_dir}"],
                                     ["-m", "mot_parallel.config", "{latin1}"],
                                     ["tools/plan.py", "--config", DEMO, "--peak-tflops", "nan"],
                                     ["tools/sample.py", "--checkpoint", "{a_dir}", "--caption-ids", "3,x"]])
def test_entry_points_as_processes(command, bad_files):
    """The real process: exit status 1 or 2, exactly one `error:` line on stderr, no traceback."""
    out = subprocess.run([sys.executable] + [c.format(**bad_files) for c in command], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert out.returncode in (1, 2), out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr


def test_bench_sampling_refuses_a_model_without_pictures(capsys):
    """bench_sampling on a config with no continuous modality: one error line naming model.continuous."""
    with pytest.raises(SystemExit) as e:
        _main("bench_sampling")(["--config", DEMO])
    err = (str(e.value.code) + capsys.readouterr().err).strip()
    assert err.startswith("error:") and "model.continuous is empty" in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("stderr,tail", [
    ("a warning\nerror: --x 3: must be 1; give 1\n", "--x 3: must be 1; give 1"),
    ("Traceback (most recent call last):\n  File \"t.py\", line 1\nValueError: boom\n", "ValueError: boom"),
    ("", "it wrote no message"), ("error: first\nerror: second\n", "second")])
def test_a_failed_childs_output_becomes_one_error_line(stderr, tail):
    """A tool that runs another (sample.py exporting a checkpoint, bench_preprocess) reports the child's failure as
    one line: its own error line, else its last line (a traceback's names the exception)."""
    from mot_parallel.cli import child_error
    assert child_error("building", stderr) == f"error: building: {tail}"
    rng = np.random.default_rng(0)
    for _ in range(200):   # whatever the child wrote, one line comes out
        text = "".join(rng.choice(list("ab: \n\r\x0b\x1c\u2028error")) for _ in range(int(rng.integers(0, 80))))
        line = child_error("building", text)
        assert line.startswith("error: building: ") and len(line.splitlines()) == 1
