"""tools/compare_runs.py and mot_parallel.studies.analysis: where each run first reaches the reference's final validation
loss, against hand-made metrics files whose crossings are worked out by hand in each test, and against a
brute-force reference (the piecewise-linear curve sampled on a fine grid) over random curves.

Tolerances: hand-computed crossings agree to 1e-9 relative (only float rounding); the grid reference agrees to one
grid spacing (1/20000 of the curve's step range).
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mot_parallel.studies.analysis import compare_runs, first_crossing, load_run
from mot_parallel.studies.analysis.run_curves import Evaluation
from mot_parallel.config import dump_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("compare_runs_tool", os.path.join(ROOT, "tools", "compare_runs.py"))
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

TOKENS_PER_STEP, FLOPS_PER_TOKEN = 1000, 6.0e6
TINY = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=128",
        "model.vocab_size=256", "model.max_seq_len=32", "train.global_batch_size=4", "train.micro_batch_size=4"]


def valid(step, overall, text=None, image=None, time_s=None, totals=True, kind=True):
    """A validation record; totals grow linearly with the step unless told otherwise (time_s)."""
    rec = {"kind": "valid"} if kind else {}
    rec.update({"step": step, "valid/loss": overall, "valid/loss/text": text, "valid/loss/image": image,
                "valid/tokens/text": 0 if text is None else 500, "valid/tokens/image": 0 if image is None else 500})
    if totals:
        rec.update({"tokens_total": step * TOKENS_PER_STEP, "flops_total": step * TOKENS_PER_STEP * FLOPS_PER_TOKEN,
                    "train_time_s": 0.5 * step if time_s is None else time_s, "eval_time_s": 0.1})
    return rec


def train(step, loss=3.0, totals=True, kind=True):
    rec = {"kind": "train"} if kind else {}
    rec.update({"step": step, "loss": loss, "loss/text": loss, "loss/image": loss, "lr": 1e-3, "grad_norm": 1.0,
                "tokens_per_s": 128 / 0.5, "step_time_s": 0.5})
    if totals:
        rec.update({"tokens_total": step * TOKENS_PER_STEP, "flops_total": step * TOKENS_PER_STEP * FLOPS_PER_TOKEN,
                    "train_time_s": 0.5 * step})
    return rec


def make_run(root, name, records, untie=None, overrides=(), text=None):
    """A run dir: the resolved config.yaml (as the trainer dumps it) and metrics.jsonl (records, or raw text)."""
    run = os.path.join(str(root), name)
    os.makedirs(run, exist_ok=True)
    over = list(TINY) + list(overrides) + ([f"model.untie=[{','.join(untie)}]"] if untie is not None else [])
    dump_config(load_config(None, over), os.path.join(run, "config.yaml"))
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write(text if text is not None else "".join(json.dumps(r) + "\n" for r in records))
    return run


def dense_reference(root):
    """Final losses at step 100: image 1.0, text 2.0, overall 1.5; wall-clock 50 s; 1e5 tokens."""
    return make_run(root, "dense", [train(50), valid(50, 2.0, text=2.5, image=1.5), train(100),
                                    valid(100, 1.5, text=2.0, image=1.0)], untie=[])


def mot_run(root):
    return make_run(root, "mot", [valid(20, 1.9, text=2.5, image=1.4, time_s=10.0),
                                  valid(40, 1.45, text=2.1, image=0.8, time_s=30.0),
                                  valid(60, 1.3, text=2.05, image=0.7, time_s=40.0)])


def block(result, name):
    return next(b for b in result["blocks"] if b["name"] == name)


def run_tool(capsys, *argv):
    tool.main(list(argv))
    return capsys.readouterr().out


# ------------------------------------------------------------------------------------------ crossings

def test_known_image_crossing_interpolated_on_every_axis(tmp_path):
    """image: 1.4 at step 20, 0.8 at step 40, target 1.0 -> w = 0.4/0.6, step 33.33 (fraction 0.3333 of 100);
    tokens and FLOPs the same fraction; wall-clock 10 + w * 20 = 23.33 s of the reference's 50 s = 0.4667."""
    result = compare_runs([load_run(dense_reference(tmp_path)), load_run(mot_run(tmp_path))])
    b = block(result, "image")
    assert b["target"]["loss"] == 1.0 and b["target"]["step"] == 100 and b["target"]["final_evaluation"]
    mot = b["rows"][1]
    w = 0.4 / 0.6
    assert mot["reached"] and not mot["at_first_evaluation"]
    assert mot["position"]["step"] == pytest.approx(20 + 20 * w, rel=1e-9)
    assert mot["position"]["tokens"] == pytest.approx((20 + 20 * w) * TOKENS_PER_STEP, rel=1e-9)
    assert mot["position"]["flops"] == pytest.approx((20 + 20 * w) * TOKENS_PER_STEP * FLOPS_PER_TOKEN, rel=1e-9)
    assert mot["position"]["time_s"] == pytest.approx(10 + 20 * w, rel=1e-9)
    for axis in ("step", "tokens", "flops"):
        assert mot["fraction"][axis] == pytest.approx(1 / 3, rel=1e-9)
    assert mot["fraction"]["time_s"] == pytest.approx((10 + 20 * w) / 50, rel=1e-9)
    assert mot["bracket"] == {"from": {"step": 20, "loss": 1.4}, "to": {"step": 40, "loss": 0.8}}
    # overall: 1.9 -> 1.45 over steps 20..40, target 1.5: w = 0.4 / 0.45
    assert block(result, "overall")["rows"][1]["position"]["step"] == pytest.approx(20 + 20 * 0.4 / 0.45)
    # the reference, monotone, first reaches its own final loss at its final evaluation
    assert b["rows"][0]["reached"] and b["rows"][0]["fraction"]["step"] == pytest.approx(1.0)


def test_not_reached_reports_the_best_loss_and_where(tmp_path, capsys):
    """text: target 2.0, the MoT run gets to 2.5, 2.1, 2.05 -> not reached, best 2.05 at step 60."""
    result = compare_runs([load_run(dense_reference(tmp_path)), load_run(mot_run(tmp_path))])
    mot = block(result, "text")["rows"][1]
    assert not mot["reached"] and mot["position"] is None and mot["fraction"] is None
    assert mot["best"]["loss"] == 2.05 and mot["best"]["step"] == 60
    out = run_tool(capsys, os.path.join(tmp_path, "dense"), os.path.join(tmp_path, "mot"))
    assert "not reached: best 2.0500 at step 60" in out
    assert "linear interpolation between the two evaluations that bracket the crossing" in out
    assert ("mot (untie: attention+ffn+norms) reaches the reference's final image validation loss at 0.333 of the "
            "reference's FLOPs (steps 0.333, tokens 0.333, wall-clock 0.467; interpolated between steps 20 and 40)"
            ) in out


def test_evaluations_without_a_modality_are_skipped(tmp_path):
    """image losses 1.6 (step 10), null (20, 30), 0.9 (50): the bracket is 10..50, w = 0.6 / 0.7 -> 44.29."""
    run = make_run(tmp_path, "ffn", [valid(10, 2.0, text=2.5, image=1.6), valid(20, 1.9, text=2.4),
                                     valid(30, 1.8, text=2.3), valid(50, 1.7, text=2.2, image=0.9)], untie=["ffn"])
    mot = block(compare_runs([load_run(dense_reference(tmp_path)), load_run(run)]), "image")["rows"][1]
    assert mot["bracket"]["from"]["step"] == 10 and mot["bracket"]["to"]["step"] == 50
    assert mot["position"]["step"] == pytest.approx(10 + 40 * 0.6 / 0.7, rel=1e-9)
    assert mot["evaluations"] == 2


def test_reference_without_a_final_modality_loss_uses_its_last_one(tmp_path, capsys):
    """The reference's final evaluation has no image token: its last image loss (step 50) is the target."""
    ref = make_run(tmp_path, "dense", [valid(50, 2.0, text=2.5, image=1.5), valid(100, 1.5, text=2.0)], untie=[])
    t = block(compare_runs([load_run(ref), load_run(mot_run(tmp_path))]), "image")["target"]
    assert t["loss"] == 1.5 and t["step"] == 50 and not t["final_evaluation"]
    assert "last available" in run_tool(capsys, ref, os.path.join(tmp_path, "mot"))


def test_a_modality_the_reference_never_evaluated_is_said_so(tmp_path, capsys):
    ref = make_run(tmp_path, "dense", [valid(50, 2.0, text=2.5), valid(100, 1.5, text=2.0)], untie=[])
    result = compare_runs([load_run(ref), load_run(mot_run(tmp_path))])
    assert block(result, "image")["target"] is None and block(result, "image")["rows"] == []
    out = run_tool(capsys, "--plot", str(tmp_path / "p.png"), ref, os.path.join(tmp_path, "mot"))
    assert "no image validation loss at any evaluation: nothing to compare" in out


def test_below_target_at_first_evaluation_is_placed_there(tmp_path):
    run = make_run(tmp_path, "mot", [valid(30, 1.0, text=1.5, image=0.5), valid(60, 0.9, text=1.4, image=0.4)])
    mot = block(compare_runs([load_run(dense_reference(tmp_path)), load_run(run)]), "image")["rows"][1]
    assert mot["at_first_evaluation"] and mot["bracket"] is None and mot["position"]["step"] == 30


def test_first_crossing_matches_a_fine_grid_on_random_curves():
    """500 random curves (2-12 evaluations, random gaps, missing values, repeated losses, targets at, between,
    above and below the losses): the interpolated crossing equals the first point of a 20001-point grid over the
    piecewise-linear curve (plus the evaluation steps) whose value is <= the target, to one grid spacing; never
    reached iff no loss <= target."""
    rng = np.random.default_rng(0)
    for case in range(500):
        n = int(rng.integers(2, 13))
        steps = np.cumsum(rng.integers(1, 50, n))
        losses = rng.choice([rng.uniform(0.5, 3.0, n), np.round(rng.uniform(0.5, 3.0, n), 1)])
        points = [(Evaluation(int(s), float(s) * 7, float(s) * 7e6, None, {}), float(v))
                  for s, v in zip(steps, losses) if rng.random() > 0.2]
        if not points:
            continue
        xs, ys = np.array([p[0].step for p in points], float), np.array([p[1] for p in points])
        target = float(rng.choice([rng.uniform(0.4, 3.1), rng.choice(ys)]))
        hit = first_crossing(points, target)
        if not (ys <= target).any():
            assert hit is None, case
            continue
        grid = np.union1d(np.linspace(xs[0], xs[-1], 20001), xs)   # the evaluations too: a curve may just touch
        expected = grid[np.argmax(np.interp(grid, xs, ys) <= target + 1e-12)]
        assert abs(hit["position"]["step"] - expected) <= (xs[-1] - xs[0]) / 20000 + 1e-9, case
        assert hit["position"]["flops"] == pytest.approx(hit["position"]["step"] * 7e6, rel=1e-9)
        assert hit["position"]["time_s"] is None


# ------------------------------------------------------------------------------------------ reading runs

def test_old_format_runs_derive_tokens_and_flops_from_the_config(tmp_path, capsys):
    """No "kind", no totals: tokens = step x 4 sequences x 32 tokens; FLOPs = tokens x 3 x forward FLOPs per token,
    written out here from Megatron's convention for the tiny config (h 64, 2 layers, 4 heads, ffn 128, seq 32,
    vocab 256): per layer 8h^2 (QKVO) + 2*s*h (causal attention) + 6*h*ffn (SwiGLU), head 2*h*V. Wall-clock n/a."""
    h, s, f, v, layers = 64, 32, 128, 256, 2
    per_token = 3 * (layers * (8 * h * h + 2 * s * h + 6 * h * f) + 2 * h * v)
    old = make_run(tmp_path, "old", [train(20, kind=False, totals=False),
                                     valid(20, 1.9, text=2.5, image=1.4, totals=False, kind=False),
                                     train(40, kind=False, totals=False),
                                     valid(40, 1.45, text=2.1, image=0.8, totals=False, kind=False)])
    run = load_run(old)
    assert [e.step for e in run.evaluations] == [20, 40]
    assert run.evaluations[1].tokens == 40 * 4 * 32
    assert run.evaluations[1].flops == pytest.approx(40 * 4 * 32 * per_token, rel=1e-12)
    assert run.evaluations[1].time_s is None
    mot = block(compare_runs([load_run(dense_reference(tmp_path)), run]), "image")["rows"][1]
    assert mot["position"]["tokens"] == pytest.approx((20 + 20 * 0.4 / 0.6) * 128, rel=1e-9)
    assert mot["fraction"]["time_s"] is None
    out = run_tool(capsys, os.path.join(tmp_path, "dense"), old)
    assert "tokens derived as step x global batch x seq len = step x 128" in out
    assert "FLOPs derived" in out and "wall-clock n/a" in out and "n/a" in out.split("notes:")[0]


def test_totals_missing_from_a_valid_record_come_from_the_train_record_of_its_step(tmp_path):
    run = make_run(tmp_path, "mixed", [train(40), valid(40, 1.45, text=2.1, image=0.8, totals=False)])
    ev = load_run(run).evaluations[0]
    assert (ev.tokens, ev.time_s) == (40 * TOKENS_PER_STEP, 20.0) and not load_run(run).notes


def test_global_batch_from_deepspeed_config_when_the_config_leaves_it_null(tmp_path):
    run = make_run(tmp_path, "old", [valid(10, 2.0, image=1.0, totals=False)],
                   overrides=["train.global_batch_size=null"])
    with open(os.path.join(run, "deepspeed_config.json"), "w") as f:
        json.dump({"train_batch_size": 6}, f)
    assert load_run(run).evaluations[0].tokens == 10 * 6 * 32


def test_repeated_steps_keep_the_last_record(tmp_path):
    """A run killed after its step-40 evaluation and resumed from step 20 logs steps 20..40 again: the resumed
    records (image 0.8 at step 40) win over the stale ones (0.5)."""
    run = make_run(tmp_path, "mot", [valid(20, 1.9, image=1.4, text=2.5), train(40), valid(40, 1.2, image=0.5, text=2),
                                     valid(20, 1.9, image=1.4, text=2.5), train(40),
                                     valid(40, 1.45, image=0.8, text=2.1)])
    r = load_run(run)
    assert [e.step for e in r.evaluations] == [20, 40] and r.evaluations[1].losses["valid/loss/image"] == 0.8
    mot = block(compare_runs([load_run(dense_reference(tmp_path)), r]), "image")["rows"][1]
    assert mot["position"]["step"] == pytest.approx(20 + 20 * 0.4 / 0.6)


def test_an_unfinished_last_line_is_skipped_with_a_note(tmp_path):
    lines = json.dumps(valid(20, 1.9, image=1.4)) + "\n" + json.dumps(valid(40, 1.4, image=0.8))[:25]
    r = load_run(make_run(tmp_path, "live", [], text=lines))
    assert [e.step for e in r.evaluations] == [20] and "unfinished last line" in r.notes[0]


# ------------------------------------------------------------------------------------------ outputs

def test_json_schema(tmp_path, capsys):
    out = run_tool(capsys, "--json", "--labels", "D,M", dense_reference(tmp_path), mot_run(tmp_path))
    r = json.loads(out)
    assert set(r) == {"reference", "interpolation", "runs", "blocks"}
    assert r["reference"] == {"label": "D", "run_dir": os.path.join(str(tmp_path), "dense")}
    assert [x["label"] for x in r["runs"]] == ["D", "M"] and r["runs"][0]["untie"] == []
    assert set(r["runs"][1]) == {"label", "run_dir", "untie", "modalities", "evaluations", "notes"}
    assert [(b["name"], b["metric"]) for b in r["blocks"]] == [
        ("text", "valid/loss/text"), ("image", "valid/loss/image"), ("overall", "valid/loss")]
    for b in r["blocks"]:
        assert set(b["target"]) == {"loss", "step", "tokens", "flops", "time_s", "final_evaluation"}
        for row in b["rows"]:
            assert set(row) == {"label", "run_dir", "evaluations", "reached", "position", "fraction", "bracket",
                                "at_first_evaluation", "best"}
            if row["reached"]:
                assert set(row["position"]) == set(row["fraction"]) == {"step", "tokens", "flops", "time_s"}


def test_plot_is_written(tmp_path, capsys):
    png = tmp_path / "cmp.png"
    out = run_tool(capsys, "--plot", str(png), dense_reference(tmp_path), mot_run(tmp_path))
    assert f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------ bad inputs

def tool_error(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        tool.main(list(argv))
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


def test_bad_inputs_are_one_error_line(tmp_path, capsys):
    ref = dense_reference(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no such run directory" in tool_error(capsys, ref, str(tmp_path / "nope"))
    assert "metrics.jsonl not found" in tool_error(capsys, ref, str(empty))
    no_valid = make_run(tmp_path, "novalid", [train(10), train(20)])
    assert "no validation records" in tool_error(capsys, ref, no_valid)
    speech = make_run(tmp_path, "speech", [valid(10, 1.0)], overrides=["model.modalities=[text,speech]"])
    assert "modalities ['text', 'speech'] but the reference" in tool_error(capsys, ref, speech)
    garbled = make_run(tmp_path, "garbled", [], text='{"kind": "valid", "step": 1}\nnot json\n{"step": 2}\n')
    assert "metrics.jsonl:2: not a JSON object" in tool_error(capsys, ref, garbled)
    no_step = make_run(tmp_path, "nostep", [], text='{"kind": "valid"}\n')
    assert "integer 'step'" in tool_error(capsys, ref, no_step)
    os.remove(os.path.join(make_run(tmp_path, "nocfg", [valid(10, 1.0)]), "config.yaml"))
    assert "config.yaml not found" in tool_error(capsys, ref, str(tmp_path / "nocfg"))
    assert "at least two run dirs" in tool_error(capsys, ref)
    assert "3 labels for 2 run dirs" in tool_error(capsys, "--labels", "a,b,c", ref, ref)


def test_hostile_metrics_and_configs_are_one_error_line_or_read(tmp_path, capsys):
    """Bytes that are not UTF-8, a "kind" that is not a string, a section that is not a mapping: one error line
    naming the file and line. An old run's `train: null` means the defaults (as load_config reads it)."""
    ref = dense_reference(tmp_path)
    latin = make_run(tmp_path, "latin", [], text='{"kind": "valid", "step": 1, "valid/loss": 1.0}\n\xff\n')
    with open(os.path.join(latin, "metrics.jsonl"), "wb") as f:
        f.write(b'{"kind": "valid", "step": 1, "valid/loss": 1.0}\n{"step": 2, "note": "caf\xe9"}\n')
    assert "metrics.jsonl:2: not UTF-8 (byte 0xe9" in tool_error(capsys, ref, latin)
    listed = make_run(tmp_path, "listed", [], text='{"kind": ["valid"], "step": 1, "valid/loss": 1.0}\n')
    assert "metrics.jsonl:1: a metrics record's \"kind\" must be a string" in tool_error(capsys, ref, listed)
    old = make_run(tmp_path, "old", [valid(50, 1.4, totals=False)], untie=[])
    cfg = yaml.safe_load(open(os.path.join(old, "config.yaml")))
    for train_section, words in ((None, "global batch is unknown"), ([1], "section 'train' must be a mapping")):
        with open(os.path.join(old, "config.yaml"), "w") as f:
            yaml.safe_dump(dict(cfg, train=train_section), f)
        assert words in tool_error(capsys, ref, old)  # named, not an AttributeError


def test_the_command_line_exits_non_zero_with_one_error_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compare_runs.py"), str(tmp_path / "a"),
                          str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path / 'a'}: no such run directory"]
