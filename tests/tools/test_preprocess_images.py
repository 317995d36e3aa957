"""tools/preprocess_data.py for the Transfusion setting: images (Pillow) -> VAE latents, precomputed latents, or
pixels -> patch rows next to the token corpus; mot_parallel/data/images.py (patchify, decode_patches).

References written here: the patch layout is an explicit loop over patches in raster order (channel-last inside
a patch); a corpus's rows are compared with a direct `vae.encode(x).latent_dist.mean`, normalised as
(mean - shift_factor) * scaling_factor, and cut by that loop. Tolerances: float32 storage 1e-5 relative (the
tool encodes in other batches than the test), float16 storage 2^-10 relative (its rounding); pixels and
precomputed latents exactly. The VAE is a tiny randomly initialised diffusers AutoencoderKL saved into a temp
directory (2x downsampling, 4 latent channels); nothing is downloaded. Bad input: one `error:` line naming
file:line and the field, and nothing left behind."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
Image = pytest.importorskip("PIL.Image")

from mot_parallel.corpus_building import demo_pictures  # noqa: E402
from mot_parallel.data.corpus import Corpus  # noqa: E402
from mot_parallel.corpus_building.image_files import read_image  # noqa: E402
from mot_parallel.data.images import decode_patches, patchify, pixels_to_unit, unpatchify  # noqa: E402
from mot_parallel.model.settings import ContinuousSpec  # noqa: E402
from tool_utils import one_error_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIFT, SCALE = 0.1, 0.5          # the tiny VAE's shift_factor and scaling_factor
SIZE, PATCH, C = 16, 2, 4        # 16 px -> 8 x 8 latents -> 4 x 4 patches of 16 values
BOI, EOI, VOCAB = 60, 61, 64


def reference_patches(x, p):
    """[C, H, W] -> rows, written as the layout's definition: patches in raster order, inside one (row, col, ch)."""
    c, h, w = x.shape
    rows = []
    for gy in range(h // p):
        for gx in range(w // p):
            rows.append([x[ch, gy * p + y, gx * p + xx] for y in range(p) for xx in range(p) for ch in range(c)])
    return np.array(rows, dtype=np.float32).reshape(-1, c * p * p)


def tiny_vae(path, **config):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=C, norm_num_groups=4,
                                  layers_per_block=1, sample_size=SIZE, **config)
    vae.save_pretrained(str(path))
    return vae.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("images")
    vae = tiny_vae(tmp / "vae", scaling_factor=SCALE, shift_factor=SHIFT)
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
    for i, p in enumerate(pics):
        Image.fromarray(p).save(tmp / f"p{i}.png")
    Image.fromarray(pics[0][..., 0]).save(tmp / "grey.png")                    # mode L: read as RGB
    lines = [[{"modality": "text", "tokens": [1, 2]}, {"modality": "image", "image": f"p{i}.png"},
              {"modality": "text", "tokens": [3]}] for i in range(5)]
    lines.append([{"modality": "image", "image": str(tmp / "grey.png")}, {"modality": "image", "image": "p1.png"}])
    (tmp / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))
    pics.append(np.repeat(pics[0][..., :1], 3, axis=2))
    pics.append(pics[1])
    return {"tmp": tmp, "vae": vae, "pics": pics}


def run_tool(argv, workers=1):
    spec = importlib.util.spec_from_file_location("_preprocess_images_tool", os.path.join(ROOT, "tools",
                                                                                          "preprocess_data.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the pool's workers find _parse by module name
    spec.loader.exec_module(module)
    module.main(argv + ["--workers", str(workers)])


def direct_encode(vae, pics):
    x = torch.tensor(np.stack([p.transpose(2, 0, 1) for p in pics]).astype(np.float32) / 127.5 - 1.0)
    with torch.no_grad():
        return ((vae.encode(x).latent_dist.mean - SHIFT) * SCALE).numpy()


# ------------------------------------------------------------------------------------------------ layout
def test_patchify_is_the_raster_layout_and_unpatchify_its_inverse():
    rng = np.random.default_rng(1)
    for _ in range(40):
        c, p, gh, gw = (int(v) for v in rng.integers(1, 5, 4))
        x = (rng.standard_normal((c, gh * p, gw * p)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
        rows = patchify(x, p)
        np.testing.assert_array_equal(rows, reference_patches(x, p))
        np.testing.assert_array_equal(unpatchify(rows, c, p, (gh, gw)), x)
        batch = np.stack([rows, -rows])                                          # leading dims pass through
        np.testing.assert_array_equal(unpatchify(batch, c, p, (gh, gw)), np.stack([x, -x]))
    with pytest.raises(ValueError, match="does not split"):
        patchify(np.zeros((3, 5, 4)), 2)


def test_demo_pictures_use_the_same_layout():
    img = demo_pictures.render((2, 1, 3, 0, 2), np.random.default_rng(0))
    for patch in (4, 8):
        rows = demo_pictures.to_patches(img, patch)
        np.testing.assert_allclose(rows, reference_patches(img.transpose(2, 0, 1) * 2.0 - 1.0, patch),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(demo_pictures.from_patches(rows, patch), img, atol=1e-6)


def test_read_image_converts_to_rgb_and_centre_crops(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = wide[:, 30:] = (0, 0, 255)
    wide[:, 10:30] = (255, 0, 0)                                # the centre square is red, the sides blue
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    for name in ("wide", "tall"):
        got = read_image(str(tmp_path / f"{name}.png"), (10, 10))
        assert got.shape == (10, 10, 3) and got.dtype == np.uint8
        inner = got[1:-1] if name == "tall" else got[:, 1:-1]   # the filter reaches 1 px beyond the crop
        assert (inner[..., 0] == 255).all() and (inner[..., 2] == 0).all(), name
        assert (got[..., 0] > 200).all() and (got[..., 2] < 55).all(), name   # squashing would show blue sides
    rgba = np.random.default_rng(2).integers(0, 256, (8, 6, 4), dtype=np.uint8)
    for mode, img in [("RGBA", Image.fromarray(rgba)), ("P", Image.fromarray(rgba[..., :3]).convert("P")),
                      ("L", Image.fromarray(rgba[..., 0]))]:
        img.save(tmp_path / f"{mode}.png")
        expected = np.asarray(Image.open(tmp_path / f"{mode}.png").convert("RGB"))
        np.testing.assert_array_equal(read_image(str(tmp_path / f"{mode}.png"), (8, 6)), expected)


# ------------------------------------------------------------------------------------------------ corpora
def test_vae_corpus_rows_equal_a_direct_encode(world, tmp_path):
    """float16 and float32 storage; BOI/EOI merged into the neighbouring text; the corpus opens for the model."""
    reference = direct_encode(world["vae"], world["pics"])
    for dtype, rtol in (("float32", 1e-5), ("float16", 2 ** -10)):
        prefix = str(tmp_path / dtype)
        run_tool(["--input", str(world["tmp"] / "docs.jsonl"), "--output-prefix", prefix, "--modalities", "text",
                  "image", "--vocab-size", str(VOCAB), "--continuous", "image", "--vae", str(world["tmp"] / "vae"),
                  "--image-size", str(SIZE), "--patch", str(PATCH), "--boi-token", str(BOI), "--eoi-token",
                  str(EOI), "--continuous-dtype", dtype, "--vae-batch", "3"])
        corpus = Corpus(prefix, ["text", "image"], VOCAB, atomic=["image"], continuous={"image": C * PATCH ** 2})
        info = corpus.ds.meta["continuous"]["image"]
        assert (info["channels"], info["patch"], info["grid"], info["source"], info["dtype"]) == \
            (C, PATCH, [4, 4], "latents", dtype)
        rows = [r for d in range(corpus.num_docs) for _, _, r in corpus.continuous_rows(d, 0, 10 ** 6)]
        assert len(rows) == len(reference) == 7
        for got, z in zip(rows, reference):
            np.testing.assert_allclose(got, reference_patches(z, PATCH), rtol=rtol, atol=1e-6)
        lengths, modes = corpus.segments(0)
        assert list(lengths) == [3, 16, 2] and list(modes) == [0, 1, 0]
        assert list(corpus.read(0, 0, 21)[0]) == [1, 2, BOI] + [0] * 16 + [EOI, 3]
        lengths, modes = corpus.segments(5)                      # image, image: [BOI] p [EOI, BOI] p [EOI]
        assert list(lengths) == [1, 16, 2, 16, 1] and list(modes) == [0, 1, 0, 1, 0]


def test_config_fills_the_settings_and_must_agree(world, tmp_path, capsys):
    config = tmp_path / "tf.yaml"
    config.write_text(f"model:\n  vocab_size: {VOCAB}\n  max_seq_len: 64\n  modalities: [text, image]\n"
                      f"  continuous:\n    image: {{source: latents, channels: {C}, patch: {PATCH}, grid: [4, 4], "
                      f"boi_token: {BOI}, eoi_token: {EOI}}}\n")
    common = ["--input", str(world["tmp"] / "docs.jsonl"), "--config", str(config), "--vae", str(world["tmp"] / "vae")]
    run_tool(common + ["--output-prefix", str(tmp_path / "c")])
    corpus = Corpus(str(tmp_path / "c"), ["text", "image"], VOCAB, atomic=["image"], continuous={"image": 16})
    assert list(corpus.read(0, 0, 3)[0]) == [1, 2, BOI]
    for extra, words in [(["--patch", "4"], ["--patch gives 4", "model.continuous.image.patch", "gives 2"]),
                         (["--image-size", "32"], ["--image-size gives [8, 8]", "gives [4, 4]"]),
                         (["--eoi-token", "7"], ["--eoi-token gives 7", "gives 61"]),
                         (["--continuous", "text"], ["--continuous text disagrees"])]:
        with pytest.raises(SystemExit) as e:
            run_tool(common + ["--output-prefix", str(tmp_path / "bad")] + extra)
        message = str(e.value.code)
        assert message.startswith("error:") and all(w in message for w in words), message
    assert not any(n.startswith("bad") for n in os.listdir(tmp_path))


def test_precomputed_latents_are_stored_exactly_and_in_order(tmp_path):
    """Two workers, one line per work item: documents still come out in input order."""
    rng = np.random.default_rng(3)
    latents = [(rng.standard_normal((C, 8, 8)) * 3).astype(dt) for dt in (np.float32, np.float64, np.float16) * 3]
    for i, z in enumerate(latents):
        np.save(tmp_path / f"z{i}.npy", z)
    (tmp_path / "z.jsonl").write_text("".join(json.dumps([{"modality": "image", "latents": f"z{i}.npy"},
                                                          {"modality": "text", "tokens": [i + 1]}]) + "\n"
                                              for i in range(len(latents))))
    run_tool(["--input", str(tmp_path / "z.jsonl"), "--output-prefix", str(tmp_path / "c"), "--modalities", "text",
              "image", "--vocab-size", str(VOCAB), "--continuous", "image", "--source", "latents", "--channels",
              str(C), "--grid", "4", "--patch", str(PATCH), "--continuous-dtype", "float32", "--chunk", "1"],
             workers=2)
    corpus = Corpus(str(tmp_path / "c"), ["text", "image"], VOCAB, atomic=["image"], continuous={"image": 16})
    for d, z in enumerate(latents):
        (_, _, rows), = corpus.continuous_rows(d, 0, 17)
        np.testing.assert_array_equal(rows, reference_patches(z.astype(np.float32), PATCH))
        assert list(corpus.read(d, 16, 17)[0]) == [d + 1]


def test_pixels_round_trip_through_the_corpus_and_decode_patches(world, tmp_path):
    rng = np.random.default_rng(4)
    pics = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(3)]
    pics[1][:] = 0
    pics[2][:] = 255                                                        # the ends of the range
    for i, p in enumerate(pics):
        Image.fromarray(p).save(tmp_path / f"q{i}.png")
    (tmp_path / "q.jsonl").write_text("".join(json.dumps([{"modality": "image", "image": f"q{i}.png"}]) + "\n"
                                              for i in range(3)))
    run_tool(["--input", str(tmp_path / "q.jsonl"), "--output-prefix", str(tmp_path / "c"), "--modalities", "text",
              "image", "--vocab-size", str(VOCAB), "--continuous", "image", "--source", "pixels", "--image-size",
              "12", "--patch", "4"])
    corpus = Corpus(str(tmp_path / "c"), ["text", "image"], VOCAB, atomic=["image"], continuous={"image": 48})
    spec = ContinuousSpec("image", channels=3, patch=4, grid=(3, 3), source="pixels")
    for d, p in enumerate(pics):
        (_, _, rows), = corpus.continuous_rows(d, 0, 9)
        unit = p.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
        np.testing.assert_array_equal(rows, reference_patches(unit, 4).astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(decode_patches(rows, spec), p)        # float16 storage is lossless here
        np.testing.assert_array_equal(decode_patches(torch.tensor(rows), spec), p)


def test_decode_patches_of_latents_match_a_direct_vae_decode(world):
    z = np.random.default_rng(5).standard_normal((2, C, 8, 8)).astype(np.float32)
    with torch.no_grad():
        x = world["vae"].decode(torch.tensor(z) / SCALE + SHIFT).sample.clamp(-1, 1).numpy()
    expected = np.clip(np.rint((x.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    spec = ContinuousSpec("image", channels=C, patch=PATCH, grid=(4, 4), source="latents")
    rows = np.stack([reference_patches(v, PATCH) for v in z])
    got = decode_patches(rows, spec, vae_dir=str(world["tmp"] / "vae"))
    assert got.shape == (2, SIZE, SIZE, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1 and (got == expected).mean() > 0.99  # float rounding
    np.testing.assert_array_equal(decode_patches(rows[1], spec, vae_dir=str(world["tmp"] / "vae")), got[1])
    with pytest.raises(ValueError, match="needs the VAE"):
        decode_patches(rows[0], spec)


def test_per_channel_latent_normalisation(tmp_path):
    """A VAE config with latents_mean/latents_std: (mean - latents_mean) * scaling_factor / latents_std."""
    from mot_parallel.corpus_building.vae_encode import encode
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 4.0]
    vae = tiny_vae(tmp_path / "v", scaling_factor=0.7, latents_mean=mean, latents_std=std)
    x = np.random.default_rng(6).uniform(-1, 1, (2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        m = vae.encode(torch.tensor(x)).latent_dist.mean.numpy()
    expected = (m - np.reshape(mean, (4, 1, 1))) * 0.7 / np.reshape(std, (4, 1, 1))
    got = encode(vae, x, batch=1, device=torch.device("cpu"))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_files(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    np.save(tmp / "short.npy", np.zeros((C, 6, 8), np.float32))
    nan = np.zeros((C, 8, 8), np.float32)
    nan[2, 3, 1] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "huge.npy", np.full((C, 8, 8), 1e5, np.float32))
    (tmp / "junk.png").write_text("not a picture")
    (tmp / "unet").mkdir()
    (tmp / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    (tmp / "noweights").mkdir()
    (tmp / "noweights" / "config.json").write_text((world["tmp"] / "vae" / "config.json").read_text())
    broken = tiny_vae(tmp / "nanvae")
    with torch.no_grad():
        broken.encoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    broken.save_pretrained(str(tmp / "nanvae"))
    Image.fromarray(world["pics"][0]).save(tmp / "ok.png")
    return tmp


GOOD = {"modality": "text", "tokens": [1]}
LAT = ["--continuous", "image", "--source", "latents", "--channels", str(C), "--grid", "4", "--patch", str(PATCH)]
PIX = ["--continuous", "image", "--source", "pixels", "--image-size", "16", "--patch", "4"]
VAE = (lambda d: ["--continuous", "image", "--vae", "{tmp}/" + d, "--image-size", "16", "--patch", "2"])  # noqa: E731
BAD = [  # (segment on line 2, options, words of the message)
    ({"modality": "image", "image": "nope.png"}, PIX, ["bad.jsonl:2", "segments[0].image", "file not found"]),
    ({"modality": "image", "image": "junk.png"}, PIX, ["bad.jsonl:2", "segments[0].image", "not a readable image"]),
    ({"modality": "image", "latents": "short.npy"}, LAT, ["bad.jsonl:2", "segments[0].latents", "shape [4, 6, 8]",
                                                          "[4, 8, 8]"]),
    ({"modality": "image", "latents": "nan.npy"}, LAT, ["bad.jsonl:2", "segments[0].latents", "NaN or inf",
                                                        "[2, 3, 1]"]),
    ({"modality": "image", "latents": "huge.npy"}, LAT, ["bad.jsonl:2", "float16", "--continuous-dtype float32"]),
    ({"modality": "image", "latents": "nan.npy"}, PIX, ["bad.jsonl:2", "source pixels"]),
    ({"modality": "image", "image": "ok.png"}, [], ["bad.jsonl:2", "segments[0].image", "'image' is discrete",
                                                    "--continuous image"]),
    ({"modality": "image", "tokens": [1]}, PIX, ["bad.jsonl:2", "segments[0].tokens", "is continuous"]),
    ({"modality": "image", "image": "ok.png"}, LAT, ["bad.jsonl:2", "segments[0].image", "--vae DIR"]),
    ({"modality": "image", "image": "ok.png"}, VAE("unet"), ["unet", "'UNet2DModel'", "not a diffusers AutoencoderKL"]),
    ({"modality": "image", "image": "ok.png"}, VAE("noweights"), ["noweights", "from_pretrained failed"]),
    ({"modality": "image", "image": "ok.png"}, VAE("nanvae"), ["bad.jsonl:2", "segments[0].image", "ok.png",
                                                               "latents holds NaN or inf"]),
]


@pytest.mark.parametrize("segment,options,words", BAD, ids=[f"{i}-{w[-1]}" for i, (_, _, w) in enumerate(BAD)])
def test_bad_image_input_is_one_error_line(segment, options, words, bad_files, tmp_path):
    (bad_files / "bad.jsonl").write_text(json.dumps([GOOD]) + "\n" + json.dumps([segment]) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    one_error_line(lambda: run_tool(["--input", str(bad_files / "bad.jsonl"), "--output-prefix", str(out / "c"),
                                     "--modalities", "text", "image", "--vocab-size", str(VOCAB)] +
                                    [o.format(tmp=bad_files) for o in options]), words, out)


# ------------------------------------------------------------------------------------------------ temp files
def test_stale_temp_files_of_dead_processes_are_removed(world, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = [f"c.bin.tmp.{dead.pid}", f"c.idx.tmp.{dead.pid}", f"c.mot.json.tmp.{dead.pid}",
             f"c.image.patches.tmp.{dead.pid}", f"c.image.patches.checked.tmp.{dead.pid}"]
    kept = [f"c.bin.tmp.{os.getppid()}",                         # a live process's run
            f"c2.bin.tmp.{dead.pid}", f"c.v2.bin.tmp.{dead.pid}",  # other prefixes
            f"c.bin.tmp.{dead.pid}.bak", "c.notes.tmp.1"]         # not ours
    for name in stale + kept:
        (out / name).write_text("x")
    run_tool(["--input", str(world["tmp"] / "docs.jsonl"), "--output-prefix", str(out / "c"), "--modalities", "text",
              "image", "--vocab-size", str(VOCAB), "--continuous", "image", "--source", "pixels", "--image-size", "16",
              "--patch", "4"])
    assert sorted(os.listdir(out)) == sorted(kept + ["c.bin", "c.idx", "c.mot.json", "c.image.patches"])


def test_the_writer_refuses_values_that_overflow_its_dtype(tmp_path):
    """1e5 is finite in float32 but inf in float16: refused when written, not found later by the trainer."""
    from mot_parallel.data.continuous_store import ContinuousWriter
    from mot_parallel.data.indexed import DataError
    writer = ContinuousWriter(str(tmp_path / "c"), np.uint16, {1: ("image", {"patch_dim": 4})}, dtype="float16")
    with pytest.raises(DataError, match="finite in float16"):
        writer.add_document([(np.full((2, 4), 1e5), 1)])
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_running_out_of_memory_is_not_called_an_unreadable_image(tmp_path, monkeypatch):
    """A size too large to scale to is the request's fault, and says so (it was reported as 'not a readable
    image'); --image-size itself is bounded before any work (tests/tools/test_cli_errors.py)."""
    from PIL import Image, ImageOps
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")

    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(ImageOps, "fit", no_memory)
    with pytest.raises(ValueError, match="out of memory scaling it to 40000 x 40000 pixels; use a smaller --image-size"):
        read_image(str(tmp_path / "a.png"), (40000, 40000))
