"""tools/sample.py and generation.generate_image refuse a request the model cannot serve, before it runs, with one
`error:` line naming the argument: more DDIM steps than the model's timesteps, a guidance scale that is not
finite, caption ids outside the vocabulary, a picture from a model without continuous modalities; and a sample
that came out NaN is an error, never a blank picture with exit status 0."""
import importlib.util
import os

import pytest
import torch

from mot_parallel.config import load_config
from mot_parallel.convert.universal import write_universal
from mot_parallel.generation import generate_image
from mot_parallel.model import ModelSettings, MoTModel
from mot_parallel.sampling_checks import SamplingError
from train_utils import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TF = ["model.vocab_size=320", "model.modalities=[text,image]", "diffusion.timesteps=50",
      "model.continuous={image: {source: pixels, channels: 3, patch: 4, grid: [2, 2], boi_token: 256, eoi_token: 257}}"]


def _universal(path, overrides, poison=False):
    cfg = load_config(None, TINY + overrides)
    s = ModelSettings.from_config(cfg)
    model = MoTModel(s)
    if poison:  # a checkpoint whose weights went NaN
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    write_universal(str(path), cfg, model.named_parameters(), {"step": 0, "has_optimizer": False,
                    "vocab_rows": s.padded_vocab(1), "vocab_size": s.vocab_size}, {"step": 0})
    return str(path), model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sample")
    return {"transfusion": _universal(tmp / "tf", TF), "plain": _universal(tmp / "plain", []),
            "nan": _universal(tmp / "nan", TF, poison=True), "tmp": tmp}


def _tool():
    """tools/sample.py as a module."""
    spec = importlib.util.spec_from_file_location("_sample_tool", os.path.join(ROOT, "tools", "sample.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sample(argv, capsys):
    module = _tool()
    with pytest.raises(SystemExit) as e:
        module.main([str(a) for a in argv])
    err = capsys.readouterr().err
    message = str(e.value.code)
    assert message.startswith("error: ") and "Traceback" not in err and "error:" not in err, message + err
    return message


@pytest.mark.parametrize("which,extra,words", [
    ("transfusion", ["--steps", "51"], ["--steps 51", "1 to 50"]),
    ("transfusion", ["--steps", "100000", "--trajectory", "{tmp}/t.png"], ["--steps 100000", "1 to 50"]),
    ("transfusion", ["--caption-ids", "3,999"], ["the caption", "[999]", "[0, 320)"]),
    ("plain", [], ["no continuous 'image' modality", "Transfusion checkpoint"]),
    ("nan", [], ["NaN"]),
    ("nan", ["--trajectory", "{tmp}/t.png"], ["NaN"]),
])
def test_requests_the_model_cannot_serve_are_one_error_line(checkpoints, capsys, which, extra, words):
    out = checkpoints["tmp"] / f"{which}.png"
    argv = ["--checkpoint", checkpoints[which][0], "--steps", "2", "--out", out]
    extra = [a.format(tmp=checkpoints["tmp"]) for a in extra]
    argv += extra if "--caption-ids" in extra else ["--caption-ids", "3,4"] + extra
    message = _sample(argv, capsys)
    assert all(w in message for w in words), message
    assert not out.exists() and not (checkpoints["tmp"] / "t.png").exists()


def test_generate_image_checks_before_the_first_step(checkpoints):
    """The library refuses what the tool refuses: a NaN guidance scale used to give an all-NaN picture, 10**9
    steps a 7.5 GB allocation."""
    model = checkpoints["transfusion"][1]
    for kwargs, words in (({"cfg_scale": float("nan")}, "--cfg nan"), ({"steps": 10 ** 9}, "--steps 1000000000"),
                          ({"steps": 0}, "--steps 0")):
        with pytest.raises(SamplingError, match=words):
            generate_image(model, [3, 4], **kwargs)
    with pytest.raises(SamplingError, match="no continuous 'image'"):
        generate_image(checkpoints["plain"][1], [3, 4])


DEMO_CANVAS = ["model.vocab_size=320", "model.modalities=[text,image]", "diffusion.timesteps=50", "model.max_seq_len=128",
               "model.continuous={image: {source: pixels, channels: 3, patch: 4, grid: [8, 8], boi_token: 256, "
               "eoi_token: 257}}"]


def test_on_step_sees_every_clean_estimate_and_changes_nothing(checkpoints):
    """generate_images(on_step=...) is told each DDIM timestep once, from T-1 down to 0, with the guided clean
    estimates the step reads; the last of them is the returned picture, and watching does not change a bit of it."""
    from mot_parallel.generation import generate_images
    from mot_parallel.model.diffusion import ddim_timesteps
    model = checkpoints["transfusion"][1]
    seen = []
    watched = generate_images(model, [[3, 4], [5]], steps=6, cfg_scale=2.0, seeds=[1, 2],
                              on_step=lambda t, x0: seen.append((t, x0.clone())))
    plain = generate_images(model, [[3, 4], [5]], steps=6, cfg_scale=2.0, seeds=[1, 2])
    assert [t for t, _ in seen] == list(ddim_timesteps(50, 6))
    assert all(torch.equal(a, b) for a, b in zip(watched, plain))
    assert torch.equal(seen[-1][1], torch.stack(watched))
    assert all(x0.shape == (2, 4, 48) and float(x0.abs().max()) <= 1.0 for _, x0 in seen)   # pixels: clamped


@pytest.mark.parametrize("steps,rows", [(3, 3), (25, 8), (8, 8)])
def test_trajectory_draws_one_row_per_shown_step(tmp_path, capsys, steps, rows):
    """--trajectory with --score: the ground truths, then the clean estimates at min(steps, 8) of the DDIM steps
    (evenly spaced, the first and the last among them), one 80-pixel row each (the PNG's height says how many),
    one 80-pixel column per picture, whichever --batch they were sampled in."""
    import matplotlib.image
    path, _ = _universal(tmp_path / "demo_canvas", DEMO_CANVAS)
    module = _tool()
    shown = sorted(module._trajectory_steps(module._model(path), steps), reverse=True)
    assert len(shown) == rows and shown[0] == 49 and shown[-1] == 0
    module.main(["--checkpoint", path, "--score", "3", "--steps", str(steps), "--trajectory", str(tmp_path / "t.png"),
                 "--out", str(tmp_path / "s.png"), "--batch", "2"])
    assert "shape" in capsys.readouterr().out
    assert matplotlib.image.imread(tmp_path / "t.png").shape[:2] == (80 * (1 + rows), 80 * 3 + 48)   # + truths, labels
    assert matplotlib.image.imread(tmp_path / "s.png").shape[0] == 80 * 2


def test_trajectory_needs_pictures_and_its_own_file(checkpoints, capsys):
    tf = checkpoints["transfusion"][0]
    png = checkpoints["tmp"] / "t.png"
    assert "give one of them" in _sample(["--checkpoint", tf, "--prompt-ids", "3", "--trajectory", png], capsys)
    assert "is the output" in _sample(["--checkpoint", tf, "--caption-ids", "3", "--out", png, "--trajectory", png],
                                      capsys)
    assert "lies inside the output" in _sample(["--checkpoint", tf, "--caption-ids", "3", "--out", png,
                                                "--trajectory", png / "t.png"], capsys)
    assert "one at a time" in _sample(["--checkpoint", tf, "--caption-ids", "3", "--score", "2"], capsys)
    assert not png.exists()


def test_score_refuses_a_canvas_that_is_not_the_demo_worlds(checkpoints, capsys):
    """The scorer reads 32 x 32 demo pictures: an 8 x 8-pixel model's pictures are refused by name, not scored
    (they used to be, silently); --caption draws them at their own size."""
    tf = checkpoints["transfusion"][0]
    assert "8 x 8" in _sample(["--checkpoint", tf, "--score", "2", "--steps", "2"], capsys)
    out = checkpoints["tmp"] / "small.png"
    import matplotlib.image
    module = _tool()
    module.main(["--checkpoint", tf, "--caption-ids", "3,4", "--steps", "2", "--out", str(out)])
    assert out.exists() and matplotlib.image.imread(out).shape[0] == 80
