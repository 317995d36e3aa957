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


def _sample(argv, capsys):
    spec = importlib.util.spec_from_file_location("_sample_tool", os.path.join(ROOT, "tools", "sample.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as e:
        module.main([str(a) for a in argv])
    err = capsys.readouterr().err
    message = str(e.value.code)
    assert message.startswith("error: ") and "Traceback" not in err and "error:" not in err, message + err
    return message


@pytest.mark.parametrize("which,extra,words", [
    ("transfusion", ["--steps", "51"], ["--steps 51", "1 to 50"]),
    ("transfusion", ["--caption-ids", "3,999"], ["the caption", "[999]", "[0, 320)"]),
    ("plain", [], ["no continuous 'image' modality", "Transfusion checkpoint"]),
    ("nan", [], ["NaN"]),
])
def test_requests_the_model_cannot_serve_are_one_error_line(checkpoints, capsys, which, extra, words):
    out = checkpoints["tmp"] / f"{which}.png"
    argv = ["--checkpoint", checkpoints[which][0], "--steps", "2", "--out", out]
    argv += extra if "--caption-ids" in extra else ["--caption-ids", "3,4"] + extra
    message = _sample(argv, capsys)
    assert all(w in message for w in words), message
    assert not out.exists()


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
