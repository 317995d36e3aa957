"""Bring your own data: tools/preprocess_data.py with a local Hugging Face tokenizer, a VQ image tokenizer, parquet
and webdataset inputs, and tools/inspect_corpus.py decoding the corpus back.

References written here: a document's ids are what Megatron's preprocessing writes for it, the tokenizer's own
encoding with its special tokens (transformers' `tok(text).input_ids`, or `tokenizers`' `encode(text).ids`) plus
EOD; a picture's codes are a direct `VQModel.encode` + `quantize` of the same pixels, read row by row; its decoded
PNG is a direct `VQModel.decode` of those codes. Exact equality throughout (same process, same batch of one).
Every file is made in the test: a byte-level BPE trained with `tokenizers`, a tiny random diffusers VQModel saved
locally, PNG/JPEG pictures, a parquet file, a webdataset shard; nothing is downloaded. Bad input gives one `error:`
line naming the file and the record, and leaves nothing behind."""
import importlib.util
import io
import json
import os
import sys
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")
Image = pytest.importorskip("PIL.Image")

from mot_parallel.corpus_building.corpus_decode import CorpusDecoder  # noqa: E402
from mot_parallel.corpus_building.image_files import read_image  # noqa: E402
from tool_utils import one_error_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE, CODES = 16, 32            # 16 px pictures -> 8 x 8 codes (2x downsampling) of a 32-entry codebook
CAPTIONS = ["a red square on the left", "two blue circles", "Grüße, 世界! tabs\tand\nnewlines",
            "the picture shows nothing at all", "x"]


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"_byo_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the pool's workers find _parse by module name
    spec.loader.exec_module(module)
    return module.main


def preprocess(argv, workers=1):
    _tool("preprocess_data")(argv + ["--workers", str(workers)])


def inspect(argv, capsys):
    capsys.readouterr()
    _tool("inspect_corpus")(argv + ["--json"])
    return json.loads(capsys.readouterr().out)


def byte_level_bpe(texts, vocab=300):
    """GPT-2 style: byte-level, so every string round-trips exactly; <|endoftext|> is its EOS."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>", "<|boi|>", "<|eoi|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def tiny_vq(path):
    torch.manual_seed(0)
    vq = diffusers.VQModel(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, num_vq_embeddings=CODES,
                           norm_num_groups=4, layers_per_block=1, sample_size=SIZE, mid_block_add_attention=False)
    with torch.no_grad():  # a spread-out codebook, so random pictures use many codes
        vq.quantize.embedding.weight.normal_(0, 0.3)
    vq.save_pretrained(str(path))
    return vq.eval()


def direct_codes(vq, pictures):
    """[N, h, w] codes of uint8 pictures [N, H, W, 3]."""
    x = torch.tensor(np.stack(pictures).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    with torch.no_grad():
        h = vq.encode(x).latents
        return vq.quantize(h)[2][2].reshape(len(x), h.shape[2], h.shape[3]).numpy()


def direct_picture(vq, codes):
    with torch.no_grad():
        z = vq.quantize.get_codebook_entry(torch.tensor(codes).reshape(-1), (1, *codes.shape, 4))
        x = vq.decode(z, force_not_quantize=True).sample.clamp(-1, 1)[0].numpy()
    return np.clip(np.rint((x.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byo")
    tok = byte_level_bpe(CAPTIONS * 20 + ["some more words to learn merges from"] * 10)
    tok.save(str(tmp / "tok.json"))
    llama = tmp / "llama_tok"  # an AutoTokenizer directory whose template puts BOS first (Llama style)
    from tokenizers import processors
    tok2 = tokenizers.Tokenizer.from_str(tok.to_str())
    tok2.add_special_tokens(["<s>", "</s>"])
    tok2.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok2.token_to_id("<s>"))])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok2, bos_token="<s>", eos_token="</s>").save_pretrained(llama)
    vq = tiny_vq(tmp / "vq")
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in CAPTIONS]
    for i, p in enumerate(pics):
        Image.fromarray(p).save(tmp / f"p{i}.png")
        Image.fromarray(p).save(tmp / f"p{i}.jpg", quality=95)
    return {"tmp": tmp, "tok": tok, "vq": vq, "pics": pics, "llama": str(llama)}


VQ_ARGS = ["--image-tokenizer", "{tmp}/vq", "--image-size", str(SIZE), "--boi-token", "<|boi|>", "--eoi-token",
           "<|eoi|>"]


def fmt(args, world):
    return [a.format(tmp=world["tmp"]) for a in args]


# ------------------------------------------------------------------------------------------------ text
@pytest.mark.parametrize("which", ["tokenizer.json", "AutoTokenizer directory"])
def test_text_records_are_megatrons_ids_and_decode_back(which, world, tmp_path, capsys):
    """--json-keys text: ids = the tokenizer's own encoding (with its BOS, if it adds one) + EOD, per document."""
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": c, "id": i}) + "\n" for i, c in enumerate(CAPTIONS)))
    path = str(world["tmp"] / "tok.json") if which == "tokenizer.json" else world["llama"]
    preprocess(["--input", str(tmp_path / "t.jsonl"), "--output-prefix", str(tmp_path / "c"), "--json-keys", "text",
                "--tokenizer", path], workers=2)
    if which == "tokenizer.json":
        ref = tokenizers.Tokenizer.from_file(path)
        expected = [ref.encode(c).ids + [ref.token_to_id("<|endoftext|>")] for c in CAPTIONS]
    else:
        ref = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        expected = [ref(c).input_ids + [ref.eos_token_id] for c in CAPTIONS]
        assert expected[0][0] == ref.bos_token_id
    meta = json.loads((tmp_path / "c.mot.json").read_text())
    assert meta["modalities"] == ["text"] and meta["tokenizer"]["path"] == os.path.abspath(path)
    assert meta["tokenizer"]["special_ids"]["eod"] == expected[0][-1] and len(meta["tokenizer"]["sha256"]) == 64
    for d, (caption, ids) in enumerate(zip(CAPTIONS, expected)):
        got = inspect(["--corpus", str(tmp_path / "c"), "--doc", str(d)], capsys)
        (seg,) = got["segments"]
        assert seg["ids"] == ids and seg["text"] == caption
        assert seg["marks"]["after"] == ["<eod>"] and seg["marks"]["before"] == (["<bos>"] if ids[0] != ids[1:2] and
                                                                                  which != "tokenizer.json" else [])


def test_megatron_command_line_runs_unchanged(world, tmp_path):
    """Megatron's own flags (--tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR --append-eod) are accepted;
    the corpus equals the one of --tokenizer DIR."""
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": c}) + "\n" for c in CAPTIONS))
    preprocess(["--input", str(tmp_path / "t.jsonl"), "--output-prefix", str(tmp_path / "m"), "--json-keys", "text",
                "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", world["llama"], "--append-eod"])
    preprocess(["--input", str(tmp_path / "t.jsonl"), "--output-prefix", str(tmp_path / "o"), "--tokenizer",
                world["llama"]])
    assert all((tmp_path / f"m{e}").read_bytes() == (tmp_path / f"o{e}").read_bytes() for e in (".bin", ".idx"))


def test_sample_finds_the_tokenizer_of_the_training_corpus(world, tmp_path):
    """tools/sample.py decodes with the tokenizer of the checkpoint's data.path (or --corpus, or --tokenizer)."""
    import argparse
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    preprocess(["--input", str(tmp_path / "t.jsonl"), "--output-prefix", str(tmp_path / "c"), "--tokenizer",
                world["llama"]])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data:\n  path: {tmp_path / 'c'}\n")
    spec = importlib.util.spec_from_file_location("_byo_sample", os.path.join(ROOT, "tools", "sample.py"))
    sample = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sample)
    ask = (lambda **kw: sample.text_tokenizer(argparse.Namespace(**dict(dict(checkpoint=str(run), corpus=None,
                                                                                tokenizer=None), **kw))))
    for tok in (ask(), ask(corpus=str(tmp_path / "c"), checkpoint=str(tmp_path)), ask(tokenizer=world["llama"])):
        assert tok.path == os.path.abspath(world["llama"]) and tok.eod == tok.specials["eos"]
        assert sample._ids("hello", None, "--prompt", tok) == [tok.specials["bos"]] + tok.encode("hello")
    assert ask(checkpoint=str(tmp_path)) is None          # no config, no corpus: demo words as before


# ------------------------------------------------------------------------------------------------ images
def test_webdataset_shard_through_a_vq_round_trips_text_codes_and_pixels(world, tmp_path, capsys):
    """key.txt / key.json caption + key.png / key.jpg picture -> caption [BOI] codes [EOI] EOD; inspect_corpus gives
    the caption, the code grid of a direct VQ encode and the PNG of a direct VQ decode."""
    samples = []
    for i, c in enumerate(CAPTIONS):
        ext = "png" if i % 2 else "jpg"
        text = {"txt": c.encode()} if i % 3 else {"json": json.dumps({"caption": c}).encode()}
        samples.append((f"s{i:03d}", {**text, ext: (world["tmp"] / f"p{i}.{ext}").read_bytes()}))
    write_shard(tmp_path / "shard.tar", samples)
    preprocess(["--input", str(tmp_path / "shard.tar"), "--output-prefix", str(tmp_path / "c"), "--json-keys",
                "txt,caption", "png,jpg:image", "--tokenizer", str(world["tmp"] / "tok.json")]
               + fmt(VQ_ARGS, world), workers=2)
    tok = world["tok"]
    boi, eoi, eod = (tok.token_to_id(t) for t in ("<|boi|>", "<|eoi|>", "<|endoftext|>"))
    meta = json.loads((tmp_path / "c.mot.json").read_text())
    first = meta["token_ranges"]["image"][0]
    assert meta["token_ranges"] == {"image": [tok.get_vocab_size(), tok.get_vocab_size() + CODES]}
    assert meta["image_codes"]["image"]["grid"] == [8, 8] and meta["vocab_size"] == first + CODES
    all_codes = direct_codes(world["vq"], [read_image(str(world["tmp"] / f"p{i}.{'png' if i % 2 else 'jpg'}"),
                                                      (SIZE, SIZE)) for i in range(len(CAPTIONS))])
    assert len(set(all_codes.ravel().tolist())) > 4, "the tiny VQ should use several codes"
    for i, (caption, codes) in enumerate(zip(CAPTIONS, all_codes)):
        out = ["--out", str(tmp_path / f"inspect{i}")] if i < 2 else []      # a JPEG and a PNG through the VQ
        text, image, end = inspect(["--corpus", str(tmp_path / "c"), "--doc", str(i)] + out, capsys)["segments"]
        assert text["ids"] == tok.encode(caption).ids + [boi] and text["text"] == caption
        assert image["ids"] == (codes.ravel() + first).tolist() and image["codes"] == codes.tolist()
        assert end["ids"] == [eoi, eod] and end["marks"] == {"before": ["<eoi>"], "after": ["<eod>"]}
        if out:
            np.testing.assert_array_equal(np.asarray(Image.open(image["file"])), direct_picture(world["vq"], codes))


def test_continuous_pixels_round_trip_exactly_through_inspect_corpus(world, tmp_path, capsys):
    """The Transfusion setting's pixel source: caption text + a PNG -> patches -> inspect_corpus's PNG is the very
    picture, and the caption decodes back around its BOI/EOI."""
    (tmp_path / "p.jsonl").write_text(json.dumps([{"modality": "text", "text": CAPTIONS[2]},
                                                  {"modality": "image", "image": str(world["tmp"] / "p3.png")}]) + "\n")
    preprocess(["--input", str(tmp_path / "p.jsonl"), "--output-prefix", str(tmp_path / "c"), "--modalities", "text",
                "image", "--tokenizer", str(world["tmp"] / "tok.json"), "--continuous", "image", "--source", "pixels",
                "--image-size", str(SIZE), "--patch", "4", "--boi-token", "<|boi|>", "--eoi-token", "<|eoi|>"])
    text, image, end = inspect(["--corpus", str(tmp_path / "c"), "--out", str(tmp_path / "o")], capsys)["segments"]
    assert text["text"] == CAPTIONS[2] and text["marks"]["after"] == ["<boi>"] and end["marks"]["before"] == ["<eoi>"]
    np.testing.assert_array_equal(np.asarray(Image.open(image["file"])), world["pics"][3])


def test_parquet_columns_and_precomputed_code_grids_with_chameleon_ranges(world, tmp_path, capsys):
    """Parquet: a caption column and a column of .npy code grids (paths), image codes offset into
    data.modality_token_ranges of --config; a Hugging Face datasets-style picture column goes through the VQ."""
    rng = np.random.default_rng(1)
    grids = [rng.integers(0, CODES, (8, 8)) for _ in CAPTIONS]
    for i, g in enumerate(grids):
        np.save(tmp_path / f"g{i}.npy", g.astype(np.int16))
    pq.write_table(pa.table({"caption": CAPTIONS, "codes": [f"g{i}.npy" for i in range(len(CAPTIONS))],
                             "picture": [{"bytes": (world["tmp"] / f"p{i}.png").read_bytes(), "path": None}
                                         for i in range(len(CAPTIONS))]}), tmp_path / "t.parquet", row_group_size=2)
    (tmp_path / "cfg.yaml").write_text("model:\n  vocab_size: 512\n  modalities: [text, image]\n"
                                       "data:\n  modality_token_ranges: {image: [400, 464]}\n")
    tok = str(world["tmp"] / "tok.json")
    preprocess(["--input", str(tmp_path / "t.parquet"), "--output-prefix", str(tmp_path / "c"), "--config",
                str(tmp_path / "cfg.yaml"), "--tokenizer", tok, "--json-keys", "codes:image", "caption",
                "--codebook-size", f"image={CODES}", "--grid", "8"], workers=2)
    for i, (caption, g) in enumerate(zip(CAPTIONS, grids)):
        image, text = inspect(["--corpus", str(tmp_path / "c"), "--doc", str(i)], capsys)["segments"]
        assert image["ids"] == (g.ravel() + 400).tolist() and image["codes"] == g.tolist()
        assert text["text"] == caption and text["ids"][-1] == world["tok"].token_to_id("<|endoftext|>")
    preprocess(["--input", str(tmp_path / "t.parquet"), "--output-prefix", str(tmp_path / "v"), "--config",
                str(tmp_path / "cfg.yaml"), "--tokenizer", tok, "--json-keys", "caption", "picture:image",
                "--image-tokenizer", str(world["tmp"] / "vq"), "--image-size", str(SIZE)])
    expected = direct_codes(world["vq"], [world["pics"][0], world["pics"][3]])
    for i, codes in zip((0, 3), expected):
        _, image, _ = inspect(["--corpus", str(tmp_path / "v"), "--doc", str(i)], capsys)["segments"]
        assert image["codes"] == codes.tolist()


@pytest.fixture(scope="module")
def pairs_corpus(world, tmp_path_factory):
    """40 caption + picture samples of a webdataset shard, through the tokenizer and the VQ (vocabulary 512)."""
    tmp = tmp_path_factory.mktemp("pairs")
    samples = [(f"k{i:04d}", {"txt": CAPTIONS[i % 5].encode(), "png": (world["tmp"] / f"p{i % 5}.png").read_bytes()})
               for i in range(40)]
    write_shard(tmp / "s.tar", samples)
    preprocess(["--input", str(tmp / "s.tar"), "--output-prefix", str(tmp / "c"), "--json-keys", "txt", "png:image",
                "--tokenizer", str(world["tmp"] / "tok.json"), "--vocab-size", "512"] + fmt(VQ_ARGS, world))
    return str(tmp / "c")


def test_the_corpus_passes_the_demo_configs_preflight(pairs_corpus, capsys):
    """configs/demo_cpu.yaml with data.path set: validation and the preflight (corpus structure, modalities, every
    token id against model.vocab_size) accept it, before any process group."""
    spec = importlib.util.spec_from_file_location("_byo_pretrain", os.path.join(ROOT, "launch", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    module.main(["--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"), "--check", f"data.path={pairs_corpus}"])
    assert capsys.readouterr().out.startswith("ok:")


@pytest.mark.slow
def test_a_corpus_built_this_way_trains(pairs_corpus, tmp_path):
    """A few steps of the tiny demo-shaped model on it: losses finite, the text loss falling (it can memorise)."""
    from mot_parallel.testing.multiprocess import run_distributed
    from train_utils import train_body
    got = run_distributed(train_body, 1, args=([f"run.output_dir={tmp_path / 'run'}", f"data.path={pairs_corpus}",
                                                "model.modalities=[text,image]", "train.steps=6",
                                                "data.valid_fraction=0"],), timeout=300)[0]
    text = [got[s]["loss/text"] for s in sorted(got)]
    assert all(np.isfinite(v) for r in got.values() for k, v in r.items() if k.startswith("loss")), got
    assert text[-1] < text[0], text


# ------------------------------------------------------------------------------------------------ properties
def _random_text(rng):
    pools = ["abcdefghij klmnop", "ÄÖÜßéèàç", "中文字符世界", "\t\n .,;:!?", "0123456789", "😀🚀"]
    n = int(rng.integers(1, 40))
    return "".join(rng.choice(list(pools[int(rng.integers(len(pools)))])) for _ in range(n))


def test_random_documents_round_trip_through_corpus_and_decoder(world, tmp_path):
    """300 random documents of random text, code grid and speech-unit segments in random order (JSONL, two workers,
    chunks of 7): every text segment decodes to itself, every code segment to its codes, every document ends in EOD,
    and the documents keep their order."""
    rng = np.random.default_rng(7)
    docs = []
    for _ in range(300):
        segs = []
        for _ in range(int(rng.integers(1, 6))):
            kind = rng.choice(["text", "image", "speech"], p=[0.5, 0.25, 0.25])
            if kind == "text":
                segs.append({"modality": "text", "text": _random_text(rng)})
            elif kind == "image":
                segs.append({"modality": "image", "codes": rng.integers(0, CODES, 4).tolist()})
            else:
                segs.append({"modality": "speech", "codes": rng.integers(0, 9, int(rng.integers(1, 30))).tolist()})
        docs.append(segs)
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    preprocess(["--input", str(tmp_path / "r.jsonl"), "--output-prefix", str(tmp_path / "c"), "--modalities", "text",
                "image", "speech", "--tokenizer", str(world["tmp"] / "tok.json"), "--codebook-size",
                f"image={CODES}", "speech=9", "--grid", "2", "--boi-token", "<|boi|>", "--chunk", "7"], workers=2)
    dec = CorpusDecoder(str(tmp_path / "c"))
    assert dec.num_docs == len(docs)
    eod = world["tok"].token_to_id("<|endoftext|>")
    for d, segs in enumerate(docs):
        got = dec.document(d)
        assert got[-1]["modality"] == "text" and got[-1]["ids"][-1] == eod
        texts = [s["text"] for s in got if s["modality"] == "text" and (s["text"] or s["marks"]["before"] == [])]
        want_text = [s["text"] for s in segs if s["modality"] == "text"]
        assert "".join(texts) == "".join(want_text), d
        for want, have in zip([s for s in segs if s["modality"] != "text"], [s for s in got if s["modality"] != "text"]):
            assert have["modality"] == want["modality"]
            assert np.ravel(have["codes"]).tolist() == want["codes"], d


def test_the_same_records_as_jsonl_parquet_and_tar_give_the_same_corpus(world, tmp_path):
    """80 random records (caption text, a list of image codes, sometimes a second caption) written as JSONL lines,
    parquet rows (row groups of 7) and webdataset samples (key.txt + key.json): byte-identical .bin/.idx, with
    one and with two workers."""
    rng = np.random.default_rng(11)
    records = [{"caption": _random_text(rng), "codes": rng.integers(0, CODES, 4).tolist(),
                "note": _random_text(rng)} for _ in range(80)]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.table({k: [r[k] for r in records] for k in records[0]}), tmp_path / "r.parquet",
                   row_group_size=7)
    write_shard(tmp_path / "r.tar", [(f"{i:05d}", {"txt": r["caption"].encode(), "json": json.dumps(
        {"codes": r["codes"], "note": r["note"]}).encode()}) for i, r in enumerate(records)])
    corpora = []
    for name, workers in [("r.jsonl", 1), ("r.parquet", 2), ("r.tar", 2), ("r.tar", 1)]:
        prefix = tmp_path / f"{name}.{workers}"
        keys = ["txt" if name.endswith("tar") else "caption", "codes:image", "note"]
        preprocess(["--input", str(tmp_path / name), "--output-prefix", str(prefix), "--modalities", "text", "image",
                    "--tokenizer", str(world["tmp"] / "tok.json"), "--codebook-size", f"image={CODES}",
                    "--json-keys"] + keys + ["--chunk", "5"], workers=workers)
        corpora.append([(tmp_path / f"{prefix.name}{ext}").read_bytes() for ext in (".bin", ".idx")])
    assert all(c == corpora[0] for c in corpora[1:])
    dec = CorpusDecoder(str(tmp_path / "r.tar.2"))
    for d in (0, 41, 79):
        text, image, note = dec.document(d)
        assert (text["text"], image["codes"], note["text"]) == (records[d]["caption"], records[d]["codes"],
                                                                records[d]["note"])


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    png = (world["tmp"] / "p0.png").read_bytes()
    write_shard(tmp / "ok.tar", [(f"k{i}", {"txt": b"hello", "png": png}) for i in range(3)])
    full = (tmp / "ok.tar").read_bytes()
    with tarfile.open(tmp / "ok.tar") as t:
        members = t.getmembers()
    (tmp / "cut_mid.tar").write_bytes(full[:members[1].offset_data + 100])   # inside the first picture's bytes
    (tmp / "cut_end.tar").write_bytes(full[:members[2].offset])              # exactly after the first sample
    write_shard(tmp / "split.tar", [("k0", {"txt": b"a"}), ("k1", {"txt": b"b"}), ("k0", {"png": png})])
    write_shard(tmp / "noimage.tar", [("k0", {"txt": b"hello", "png": png}), ("k1", {"txt": b"no picture"})])
    pq.write_table(pa.table({"caption": ["a", "b"]}), tmp / "nocol.parquet")
    (tmp / "t.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"txt": "wrong key"}) + "\n")
    (tmp / "cont.jsonl").write_text(json.dumps([{"modality": "text", "text": "ok"}]) + "\n" +
                                    json.dumps([{"modality": "image", "text": "words"}]) + "\n")
    (tmp / "missing.jsonl").write_text(json.dumps([{"modality": "image", "image": "p0.png"}]) + "\n" +
                                       json.dumps([{"modality": "image", "image": "nope.png"}]) + "\n")
    (tmp / "p0.png").write_bytes(png)
    (tmp / "code.jsonl").write_text(json.dumps([{"modality": "image", "codes": [1, 2, 3, 99]}]) + "\n")
    (tmp / "broken.json").write_text("{not a tokenizer")
    (tmp / "empty_dir").mkdir()
    return tmp


T = ["--tokenizer", "{world}/tok.json"]
BAD_INPUT = [  # (input, options, words)
    ("t.jsonl", ["--tokenizer", "{bad}/nowhere"], ["--tokenizer", "nowhere", "not found"]),
    ("t.jsonl", ["--tokenizer", "{bad}/broken.json"], ["--tokenizer", "broken.json", "not a tokenizers file"]),
    ("t.jsonl", ["--tokenizer", "{bad}/empty_dir"], ["--tokenizer", "empty_dir", "no tokenizer files"]),
    ("t.jsonl", T + ["--eod-token", "<|nope|>"], ["--eod-token", "<|nope|>", "not a token"]),
    ("t.jsonl", T, ["t.jsonl:2", "no field 'text'", "txt", "--json-keys"]),
    ("t.jsonl", ["--modalities", "text", "--vocab-size", "512"], ["t.jsonl:1", "segments[0].text", "--tokenizer"]),
    ("cont.jsonl", T + ["--modalities", "text", "image", "--continuous", "image", "--source", "pixels",
                        "--image-size", "16", "--patch", "4"], ["cont.jsonl:2", "segments[0].text", "continuous"]),
    ("missing.jsonl", T + ["--modalities", "text", "image"] + VQ_ARGS, ["missing.jsonl:2", "segments[0].image",
                                                                         "nope.png", "file not found"]),
    ("noimage.tar", T + ["--json-keys", "txt", "png:image"] + VQ_ARGS, ["noimage.tar", "sample 'k1'", "no field 'png'"]),
    ("split.tar", T + ["--json-keys", "txt", "png:image"] + VQ_ARGS, ["split.tar", "sample 'k0' appears again",
                                                                       "adjacent"]),
    ("cut_mid.tar", T + ["--json-keys", "txt", "png:image"] + VQ_ARGS, ["cut_mid.tar", "truncated"]),
    ("cut_end.tar", T + ["--json-keys", "txt", "png:image"] + VQ_ARGS, ["cut_end.tar", "truncated"]),
    ("nocol.parquet", T + ["--json-keys", "caption", "png:image"] + VQ_ARGS, ["nocol.parquet", "no column 'png'",
                                                                                "caption"]),
    ("code.jsonl", T + ["--modalities", "text", "image", "--codebook-size", "image=32"],
     ["code.jsonl:1", "segments[0].codes", "code 99", "[0, 32)"]),
    ("t.jsonl", T + ["--modalities", "text", "image"] + VQ_ARGS[:2], ["--image-tokenizer", "--image-size"]),
    ("t.jsonl", T + ["--codebook-size", "image"], ["--codebook-size image", "MODALITY=SIZE"]),
    ("t.jsonl", T + ["--json-keys", "text:video"], ["--json-keys text:video", "not one of"]),
    ("t.jsonl", T + ["--vocab-size", "100"], ["the tokenizer", "--vocab-size"]),
    ("t.jsonl", T + ["--codebook-size", "text=8"], ["codes for 'text'", "text modality"]),
    ("t.jsonl", T + ["--image-modality", "pics"], ["--image-modality", "neither is given"]),
]


@pytest.mark.parametrize("name,options,words", BAD_INPUT, ids=[f"{i}-{n}" for i, (n, _, _) in enumerate(BAD_INPUT)])
def test_bad_input_is_one_error_line_naming_file_and_record(name, options, words, world, bad, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    options = [o.replace("{world}", str(world["tmp"])).replace("{tmp}", str(world["tmp"])).replace("{bad}", str(bad))
               for o in options]
    one_error_line(lambda: preprocess(["--input", str(bad / name), "--output-prefix", str(out / "c")] + options),
                   words, out)


def test_damaged_shards_and_parquet_files_give_a_corpus_or_one_error_line(world, tmp_path):
    """A tar shard and a parquet file cut at 8 random points each and with random bytes overwritten (4 each):
    every run ends in a corpus or in one `error:` line naming the file, never in a traceback or a hang."""
    rng = np.random.default_rng(5)
    write_shard(tmp_path / "ok.tar", [(f"k{i}", {"txt": _random_text(rng).encode(), "json": json.dumps(
        {"codes": rng.integers(0, CODES, 4).tolist()}).encode()}) for i in range(12)])
    pq.write_table(pa.table({"txt": [_random_text(rng) for _ in range(12)],
                             "codes": [rng.integers(0, CODES, 4).tolist() for _ in range(12)]}), tmp_path / "ok.parquet",
                   row_group_size=3)
    outcomes = []
    for ext in ("tar", "parquet"):
        data = (tmp_path / f"ok.{ext}").read_bytes()
        damaged = [data[:int(rng.integers(1, len(data)))] for _ in range(8)]
        for _ in range(4):
            b = bytearray(data)
            at = int(rng.integers(0, len(b) - 8))
            b[at:at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
            damaged.append(bytes(b))
        for k, blob in enumerate(damaged):
            path = tmp_path / f"d{k}.{ext}"
            path.write_bytes(blob)
            try:
                preprocess(["--input", str(path), "--output-prefix", str(tmp_path / f"out_{ext}{k}"), "--modalities",
                            "text", "image", "--tokenizer", str(world["tmp"] / "tok.json"), "--codebook-size",
                            f"image={CODES}", "--json-keys", "txt", "codes:image"])
                outcomes.append("corpus")
            except SystemExit as e:
                message = str(e.code)
                assert message.startswith("error:") and "\n" not in message and path.name in message, message
                outcomes.append("error")
    assert outcomes.count("error") >= 8, outcomes      # every cut file and most damage is caught


def test_inspect_refuses_a_changed_tokenizer_and_a_missing_document(world, tmp_path, capsys):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    tok = tmp_path / "tok.json"
    tok.write_bytes((world["tmp"] / "tok.json").read_bytes())
    preprocess(["--input", str(tmp_path / "t.jsonl"), "--output-prefix", str(tmp_path / "c"), "--tokenizer", str(tok)])
    for argv, words in [(["--doc", "1"], ["no document 1", "it has 1"]),
                        (["--tokenizer", world["llama"]], ["sha256", "not the same tokenizer"])]:
        with pytest.raises(SystemExit) as e:
            _tool("inspect_corpus")(["--corpus", str(tmp_path / "c")] + argv)
        assert str(e.value.code).startswith("error:") and all(w in str(e.value.code) for w in words), e.value.code
