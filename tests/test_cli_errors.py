"""Every command-line tool (tools/*.py, launch/pretrain.py, python -m mot_parallel.config) answers bad input
with one `error:` message and a non-zero exit, never a traceback: missing files, a directory given as the
config, files that are not UTF-8, configs with NaN or impossible values, huge integers, out-of-range
arguments. Each tool's main() runs in-process on the bad input (any exception other than SystemExit fails the
test with its traceback); the two entry points users meet first also run as real processes."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "tools"))  # scripts with a main(), not helper modules
               if n.endswith(".py") and "\ndef main(" in open(os.path.join(ROOT, "tools", n)).read())
# config-taking commands: argv before and after --config <file>
CONFIG_COMMANDS = {
    "balance_report": ([], ["--steps", "1"]),
    "bench_loader": ([], ["--steps", "1"]),
    "bench_checkpoint_hash": ([], ["--sample-mib", "1"]),
    "bench_train": ([], ["--steps", "2", "--skip", "0"]),
    "flops": ([], []),
    "plan": ([], []),
    "preprocess_data": (["--input", "{good_jsonl}", "--output-prefix", "{tmp}/out/c"], []),
    "profile_step": ([], []),
    "convert_checkpoint": (["from-universal"], ["--universal", "{tmp}"]),
    "pretrain": ([], []),
}


def _main(name):
    path = os.path.join(ROOT, "launch" if name == "pretrain" else "tools", name + ".py")
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # workers of a multiprocessing pool find the tool's functions by module name
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "latin1.yaml").write_bytes(b"model:\n  hidden_size: 64\n# caf\xe9\n")
    (tmp / "nan.yaml").write_text("model:\n  max_seq_len: 1\ntrain:\n  optimizer:\n    lr: .nan\n")
    (tmp / "good.jsonl").write_text('{"segments": [{"modality": "text", "tokens": [1, 2, 3]}]}\n')
    (tmp / "latin1.jsonl").write_bytes(b'{"segments": [{"modality": "text", "tokens": [1, 2]}]}\n\xff\xfe\n')
    (tmp / "huge.jsonl").write_text('{"segments": [{"modality": "text", "tokens": [1, %d]}]}\n' % 10 ** 30)
    (tmp / "deep.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    (tmp / "profiles.jsonl").write_bytes(b'{"segments": [["text", 10]]}\n\xff\n')
    (tmp / "profiles_huge.jsonl").write_text('{"segments": [["text", %d]]}\n' % 10 ** 30)
    (tmp / "a_file").write_text("x")
    return {"tmp": str(tmp), "good_jsonl": str(tmp / "good.jsonl"), "missing": str(tmp / "nope.yaml"),
            "directory": str(tmp), "latin1": str(tmp / "latin1.yaml"), "nan": str(tmp / "nan.yaml")}


def fails_cleanly(name, argv, capsys, words=()):
    """Run a tool's main on argv: it must exit non-zero with an `error:` message (and each of `words`)."""
    with pytest.raises(SystemExit) as e:
        _main(name)(argv)
    code, err = e.value.code, capsys.readouterr().err
    message = code if isinstance(code, str) else err
    assert code not in (0, None), f"{name} {argv}: exit status {code!r}"
    assert "error:" in message and "Traceback" not in err, message
    for w in words:
        assert w in message, f"{name}: {w!r} not in {message!r}"
    return message


BAD_CONFIG_WORDS = {"missing": ["config file not found", "nope.yaml"], "directory": ["is a directory"],
                    "latin1": ["not UTF-8", "line 3"], "nan": ["train.optimizer.lr=nan", "model.max_seq_len=1"]}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIG_WORDS))
@pytest.mark.parametrize("name", sorted(CONFIG_COMMANDS))
def test_bad_config_is_one_error_line(name, kind, files, capsys):
    before, after = CONFIG_COMMANDS[name]
    argv = [a.format(**files) for a in before] + ["--config", files[kind]] + [a.format(**files) for a in after]
    fails_cleanly(name, argv, capsys, BAD_CONFIG_WORDS[kind])


TI = ["--input", "{good_jsonl}", "--modalities", "text", "image", "--vocab-size", "512"]
BAD_ARGUMENTS = [
    ("preprocess_data", ["--input", "{tmp}/latin1.jsonl", "--modalities", "text", "--vocab-size", "512"],
     ["latin1.jsonl:2", "not UTF-8"]),
    ("preprocess_data", ["--input", "{tmp}/huge.jsonl", "--modalities", "text", "--vocab-size", "512"],
     ["huge.jsonl:1", "tokens[1]=" + str(10 ** 30)]),
    ("preprocess_data", ["--input", "{tmp}/deep.jsonl", "--modalities", "text", "--vocab-size", "512"],
     ["deep.jsonl:1"]),
    ("preprocess_data", ["--input", "{tmp}", "--modalities", "text", "--vocab-size", "512"], ["is a directory"]),
    ("preprocess_data", ["--input", "{good_jsonl}", "--modalities", "text", "--vocab-size", "512", "--workers", "0"],
     ["--workers"]),
    ("preprocess_data", ["--input", "{good_jsonl}", "--modalities", "text", "text", "--vocab-size", "512"],
     ["twice"]),
    # continuous (image) modalities: options that cannot describe one, a VAE directory that is not one
    ("preprocess_data", TI + ["--continuous", "image", "--vae", "{tmp}", "--patch", "2"],
     ["--vae", "no config.json", "not a diffusers AutoencoderKL"]),
    ("preprocess_data", TI + ["--patch", "2"], ["--patch", "none is declared"]),
    ("preprocess_data", TI + ["--continuous", "video"], ["--continuous video", "not one of the modalities"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--image-size", "30", "--patch", "4"],
     ["--image-size 30 30", "multiple of 4"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--image-size", "8", "--patch", "4",
                              "--boi-token", "600"], ["boi token 600", "outside the vocabulary"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "pixels", "--channels", "4", "--patch", "4",
                              "--image-size", "8"], ["--channels gives 4", "RGB pixels gives 3"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "latents", "--patch", "2"], ["--channels"]),
    ("preprocess_data", TI + ["--continuous", "image", "--source", "latents", "--channels", "4", "--patch", "2",
                              "--image-size", "16"], ["--image-size", "--grid"]),
    ("preprocess_data", TI + ["--continuous-dtype", "float8"], ["--continuous-dtype"]),
    # your own data: a tokenizer that is not there, options that cannot describe a layout
    ("preprocess_data", ["--input", "{good_jsonl}", "--tokenizer", "{tmp}/nowhere"], ["--tokenizer", "nowhere"]),
    ("preprocess_data", TI + ["--codebook-size", "image"], ["--codebook-size image", "MODALITY=SIZE"]),
    ("preprocess_data", TI + ["--json-keys", "text:video"], ["--json-keys text:video", "not one of"]),
    ("preprocess_data", TI + ["--eod-token", "5"], ["--eod-token", "--tokenizer"]),
    ("preprocess_data", TI + ["--image-tokenizer", "{tmp}"], ["--image-tokenizer", "no config.json", "VQModel"]),
    ("inspect_corpus", ["--corpus", "{tmp}/nowhere"], ["nowhere.idx", "not found"]),
    ("bench_preprocess", ["--documents", "0"], ["--documents"]),
    ("inspect_corpus", ["--corpus", "{tmp}/nowhere", "--doc", "-1"], ["--doc"]),
    ("balance_report", ["--docs", "{tmp}/profiles.jsonl"], ["profiles.jsonl:2", "UTF-8", "0xff"]),
    ("balance_report", ["--docs", "{tmp}/profiles_huge.jsonl"], ["profiles_huge.jsonl:1"]),
    ("balance_report", ["--docs", "{tmp}/nope.jsonl"], ["nope.jsonl"]),
    ("balance_report", ["--steps", "0"], ["--steps"]),
    ("bench_layer", ["--hidden", "0"], ["--hidden"]),
    ("bench_layer", ["--hidden", "64", "--heads", "3", "--ffn", "64"], ["--heads 3"]),
    ("bench_layer", ["--split", "0.5,x"], ["--split"]),
    ("make_demo_corpus", ["--output-prefix", "{tmp}/d", "--documents", "0"], ["--documents"]),
    ("make_demo_corpus", ["--output-prefix", "{tmp}/a_file/d", "--documents", "5"], ["a_file"]),
    ("plan", ["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--gpus", "0"], ["--gpus"]),
    ("bench_train", ["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--steps", "3", "--skip", "5"],
     ["--skip"]),
    ("profile_step", ["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--steps", "0"], ["--steps"]),
    ("bench_loader", ["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--dp", "0"], ["--dp"]),
    ("bench_checkpoint_hash", ["--sample-mib", "0"], ["--sample-mib"]),
    ("bench_checkpoint_hash", ["--dir", "{tmp}/a_file"], ["--dir", "a_file"]),
    ("convert_checkpoint", ["export", "--universal", "{tmp}/nowhere", "--out", "{tmp}/x"], ["nowhere"]),
    ("convert_checkpoint", ["hf-to-mot", "--hf", "{tmp}/nowhere", "--out", "{tmp}/x", "--modalities", "text"],
     ["nowhere"]),
    ("convert_checkpoint", ["to-universal", "--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"),
                            "--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/x"], ["nowhere"]),
    ("build_real_corpus", ["--output-prefix", "{tmp}/r", "--documents", "0"], ["documents"]),
    ("build_real_corpus", ["--output-prefix", "{tmp}/r", "--workers", "0"], ["--workers"]),
    ("compare_runs", ["{tmp}/nowhere", "{tmp}"], ["nowhere"]),
    ("gpu_check", ["--parts", "no_such_part"], ["unknown part"]),
    ("fidelity_study", ["grid", "--rows", "dense,no_such_row"], ["--rows", "no_such_row"]),
    ("fidelity_study", ["grid", "--steps", "0"], ["--steps"]),
    ("sample", ["--checkpoint", "{tmp}/nowhere", "--score", "2"], ["nowhere"]),
    ("sample", ["--checkpoint", "{tmp}"], ["give --caption"]),
    ("pretrain", ["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--dry-run", "--world-size", "0"],
     ["--world-size"]),
    ("pretrain", ["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--dry-run", "--rank", "5"],
     ["--rank 5"]),
]


def _case_id(name, argv):
    return f"{name} " + " ".join(a.replace("{tmp}/", "") for a in argv if not a.startswith(ROOT))


@pytest.mark.parametrize("name,argv,words", BAD_ARGUMENTS, ids=[_case_id(n, a) for n, a, _ in BAD_ARGUMENTS])
def test_bad_argument_is_one_error_line(name, argv, words, files, capsys):
    argv = [a.format(**files) for a in argv]
    if name == "preprocess_data":
        argv += ["--output-prefix", os.path.join(files["tmp"], "out", "c")]
    fails_cleanly(name, argv, capsys, words)


def test_every_tool_is_covered():
    covered = set(CONFIG_COMMANDS) | {n for n, _, _ in BAD_ARGUMENTS}
    assert set(TOOLS) <= covered, f"tools without a bad-input test: {set(TOOLS) - covered}"


@pytest.mark.parametrize("command", [["launch/pretrain.py", "--config", "{directory}"],
                                     ["-m", "mot_parallel.config", "{latin1}"]])
def test_entry_points_as_processes(command, files):
    """The real process: exit status 1, one `error:` line on stderr, no traceback."""
    out = subprocess.run([sys.executable] + [c.format(**files) for c in command], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error:") and "Traceback" not in out.stderr, out.stderr
