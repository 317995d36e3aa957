"""No tool deletes or overwrites what it did not write (mot_parallel/outputs.py): an existing output is refused
unless --overwrite is given and it carries the same tool's mark; an output that is, contains or lies inside an
input is refused whatever the flags; the library writers (universal, export, HF, corpus) keep the same rule
however they are called. Every refusal is one `error:` line and leaves every file as it was."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from hf_utils import mot_universal
from mot_parallel.studies.png_files import png_is_ours
from mot_parallel.outputs import MARKER, OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOLS = {}


def tool(name):
    if name not in _TOOLS:
        spec = importlib.util.spec_from_file_location(f"_outputs_{name}", os.path.join(ROOT, "tools", name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # workers of a multiprocessing pool find the tool's functions by module name
        spec.loader.exec_module(module)
        _TOOLS[name] = module.main
    return _TOOLS[name]


def refused(name, argv, *words):
    with pytest.raises(SystemExit) as e:
        tool(name)([str(a) for a in argv])
    message = str(e.value.code)
    assert message.startswith("error: ") and all(w in message for w in words), message
    return message


def users_dir(path):
    """A directory holding a user's file; returns a check that it is untouched."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "mine.txt"), "w") as f:
        f.write("weeks of work")
    return lambda: sorted(os.listdir(path)) == ["mine.txt"] and open(os.path.join(path, "mine.txt")).read() == \
        "weeks of work"


@pytest.fixture(scope="module")
def universal(tmp_path_factory):
    path = tmp_path_factory.mktemp("u") / "universal"
    mot_universal(path, [])
    return str(path)


def test_converters_refuse_outputs_that_are_contain_or_lie_inside_inputs(tmp_path, universal):
    """The reported losses: hf-to-mot --hf X --out X deleted the HF model; to-universal --out <run> replaced a whole
    run; export --universal u --out u dropped the optimizer states."""
    hf = tmp_path / "hf"
    intact = users_dir(hf)
    refused("convert_checkpoint", ["hf-to-mot", "--hf", hf, "--out", hf, "--modalities", "text"], "is the input")
    refused("convert_checkpoint", ["hf-to-mot", "--hf", hf, "--out", hf / "sub", "--modalities", "text"],
            "lies inside the input")
    assert intact()
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000008").mkdir(parents=True)
    refused("convert_checkpoint", ["to-universal", "--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"),
                                   "--checkpoint", run / "checkpoints", "--out", run], "contains the input")
    assert os.listdir(run) == ["checkpoints"]
    before = sorted(os.listdir(universal))
    refused("convert_checkpoint", ["export", "--universal", universal, "--out", universal], "is the input")
    refused("convert_checkpoint", ["to-hf", "--universal", universal, "--modality", "text", "--out",
                                   os.path.join(universal, "hf")], "lies inside the input")
    assert sorted(os.listdir(universal)) == before


def test_from_universal_refuses_a_run_that_has_checkpoints(tmp_path, universal):
    """Such a run would resume its own checkpoints, silently not the universal one asked for."""
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000004").mkdir(parents=True)
    refused("convert_checkpoint", ["from-universal", "--config", os.path.join(ROOT, "configs", "demo_cpu.yaml"),
                                   "--universal", universal, f"run.output_dir={run}"], "already holds checkpoints")


def test_overwrite_replaces_only_an_earlier_output_of_the_same_kind(tmp_path, universal, capsys):
    users = tmp_path / "users"
    intact = users_dir(users)
    for flags in ([], ["--overwrite"]):  # a directory the user made is never replaced, asked or not
        refused("convert_checkpoint", ["to-hf", "--universal", universal, "--modality", "text", "--out", users]
                + flags, "users")
    assert intact()
    out = tmp_path / "export"
    tool("convert_checkpoint")(["export", "--universal", universal, "--out", str(out)])
    first = os.stat(out / "model.safetensors").st_mtime_ns
    refused("convert_checkpoint", ["export", "--universal", universal, "--out", out], "--overwrite")
    refused("convert_checkpoint", ["to-hf", "--universal", universal, "--modality", "text", "--out", out,
                                   "--overwrite"], "single-file export", "not a Hugging Face checkpoint")
    tool("convert_checkpoint")(["export", "--universal", universal, "--out", str(out), "--overwrite"])
    assert os.stat(out / "model.safetensors").st_mtime_ns != first and os.path.isfile(out / MARKER)


def test_library_writers_never_replace_a_directory_they_did_not_write(tmp_path, universal):
    """The guard is in the one place a directory is replaced, whoever calls the writer."""
    from mot_parallel.convert import export_to_hf, export_universal
    users = tmp_path / "users"
    intact = users_dir(users)
    with pytest.raises(OutputError, match="never replaced"):
        export_universal(universal, str(users))
    with pytest.raises(OutputError, match="never replaced"):
        export_to_hf(universal, "text", str(users))
    assert intact()
    leftover = tmp_path / "out.writing"  # a stranger where the staging directory goes: refused, not removed
    stranger = users_dir(leftover)
    with pytest.raises(OutputError, match="not written by this project"):
        export_universal(universal, str(tmp_path / "out"))
    assert stranger()


def test_corpus_prefixes_are_replaced_only_when_ours(tmp_path):
    """make_demo_corpus / preprocess_data / IndexedWriter: a prefix's files are ours when its sidecar is, and a
    tool's --overwrite replaces only a corpus its own kind of writer made (the sidecar's written_by)."""
    from mot_parallel.data.indexed import IndexedWriter
    prefix = tmp_path / "c"
    tool("make_demo_corpus")(["--output-prefix", str(prefix), "--documents", "5"])
    refused("make_demo_corpus", ["--output-prefix", prefix, "--documents", "5"], "c.bin exists", "--overwrite")
    tool("make_demo_corpus")(["--output-prefix", str(prefix), "--documents", "6", "--overwrite"])
    assert json.load(open(f"{prefix}.mot.json"))["documents"] == 6
    theirs = tmp_path / "theirs"
    open(f"{theirs}.bin", "w").write("not a corpus of ours")
    refused("make_demo_corpus", ["--output-prefix", theirs, "--overwrite"], "theirs.bin", "not written by this tool")
    with pytest.raises(OutputError, match="theirs.bin"):
        IndexedWriter(str(theirs), overwrite=True)
    assert open(f"{theirs}.bin").read() == "not a corpus of ours" and not os.path.exists(f"{theirs}.idx")
    jsonl = tmp_path / "demo.jsonl"  # the JSONL carries its mark in every line
    tool("make_demo_corpus")(["--jsonl", str(jsonl), "--documents", "3"])
    refused("make_demo_corpus", ["--jsonl", jsonl, "--documents", "3"], "--overwrite")
    tool("make_demo_corpus")(["--jsonl", str(jsonl), "--documents", "4", "--overwrite"])
    assert len(open(jsonl).readlines()) == 4
    other = tmp_path / "pre"  # a corpus of another writer (preprocess_data) is not make_demo_corpus's to replace
    tool("preprocess_data")(["--input", str(jsonl), "--output-prefix", str(other), "--modalities", "text", "image",
                             "speech", "--vocab-size", "512", "--workers", "1"])
    refused("make_demo_corpus", ["--output-prefix", other, "--overwrite"], "pre.bin", "not written by this tool")
    refused("preprocess_data", ["--input", jsonl, "--output-prefix", prefix, "--overwrite", "--modalities", "text",
                                "--vocab-size", "512"], "c.bin", "not written by this tool")
    assert json.load(open(f"{other}.mot.json"))["written_by"] == "preprocess_data"
    refused("make_demo_corpus", ["--output-prefix", tmp_path / "d", "--jsonl", tmp_path / "d.bin"], "--jsonl")
    assert not os.path.exists(tmp_path / "d.bin")
    vae = tmp_path / "vae"  # an output inside an input directory
    users_dir(vae)
    refused("preprocess_data", ["--input", jsonl, "--output-prefix", vae / "c", "--modalities", "text", "image",
                                "speech", "--vocab-size", "512", "--vae", vae], "lies inside the input", "--vae")
    assert sorted(os.listdir(vae)) == ["mine.txt"]


def _run_dir(path, losses):
    os.makedirs(path)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write("model:\n  modalities: [text]\n  untie: []\n")
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"kind": "valid", "step": step, "valid/loss": loss, "valid/loss/text": loss,
                                "tokens_total": step, "flops_total": step, "train_time_s": step}) + "\n")
    return str(path)


def test_plots_go_to_new_png_files_and_replace_only_ours(tmp_path, capsys):
    """compare_runs --plot (balance_report and sample.py share the rule): a missing directory is made, the path
    printed is the file written, a bare name (which matplotlib would write as NAME.png) is refused."""
    ref, other = _run_dir(tmp_path / "ref", [3.0, 2.0]), _run_dir(tmp_path / "mot", [2.5, 1.5])
    plot = tmp_path / "new" / "dir" / "cmp.png"
    tool("compare_runs")([ref, other, "--plot", str(plot)])
    assert png_is_ours(str(plot)) and f"plot: {plot}" in capsys.readouterr().out
    refused("compare_runs", [ref, other, "--plot", tmp_path / "new" / "dir"], "ending in .png")
    refused("compare_runs", [ref, other, "--plot", plot], "--overwrite")
    tool("compare_runs")([ref, other, "--plot", str(plot), "--overwrite"])
    users = tmp_path / "users.png"
    users.write_bytes(b"\x89PNG\r\n\x1a\n holiday pictures")
    refused("compare_runs", [ref, other, "--plot", users, "--overwrite"], "not written by this tool")
    assert users.read_bytes().endswith(b"holiday pictures")
    refused("compare_runs", [ref, other, "--plot", os.path.join(ref, "cmp.png")], "lies inside the input")
    capsys.readouterr()
    tool("balance_report")(["--steps", "1", "--documents", "200", "--dp", "2", "--micro-batches", "1",
                            "--seq-len", "512", "--plot", str(tmp_path / "missing" / "b.png")])
    assert png_is_ours(str(tmp_path / "missing" / "b.png"))


def test_an_aborted_corpus_leaves_nothing_behind(tmp_path):
    """IndexedWriter removes the directories it created when the corpus is not written."""
    from mot_parallel.data.indexed import IndexedWriter
    w = IndexedWriter(str(tmp_path / "a" / "b" / "c"))
    w.add_document([(np.arange(3), 0)])
    w.abort()
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(sys.platform != "linux", reason="realpaths of symlinks")
def test_overlap_is_decided_on_real_paths(tmp_path, universal):
    link = tmp_path / "link"
    os.symlink(universal, link)
    refused("convert_checkpoint", ["export", "--universal", universal, "--out", link / "x"], "lies inside the input")


def test_inspect_corpus_writes_pictures_into_a_directory_of_its_own(tmp_path, capsys):
    """--out DIR: new, or an earlier --out of this tool; a picture there is replaced only with --overwrite and never
    through a link; a directory of the user's, the corpus's own directory and a link are refused, nothing written."""
    from mot_parallel.corpus_building.demo_pictures import write_demo_pictures
    prefix = write_demo_pictures(str(tmp_path / "data" / "pics"), 3)
    out = tmp_path / "inspect"
    tool("inspect_corpus")(["--corpus", prefix, "--doc", "1", "--out", str(out)])
    pictures = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    assert pictures and os.path.isfile(out / MARKER) and str(out / pictures[0]) in capsys.readouterr().out
    refused("inspect_corpus", ["--corpus", prefix, "--doc", "1", "--out", out], pictures[0], "--overwrite")
    tool("inspect_corpus")(["--corpus", prefix, "--doc", "1", "--out", str(out), "--overwrite"])
    tool("inspect_corpus")(["--corpus", prefix, "--doc", "2", "--out", str(out)])  # another document: new files
    (out / pictures[0]).unlink()
    (out / pictures[0]).symlink_to(tmp_path / "elsewhere.png")
    refused("inspect_corpus", ["--corpus", prefix, "--doc", "1", "--out", out, "--overwrite"], "symbolic link")
    assert not (tmp_path / "elsewhere.png").exists()
    users = tmp_path / "users"
    intact = users_dir(users)
    refused("inspect_corpus", ["--corpus", prefix, "--doc", "1", "--out", users, "--overwrite"], "users")
    assert intact()
    before = sorted(os.listdir(tmp_path / "data"))
    refused("inspect_corpus", ["--corpus", prefix, "--out", tmp_path / "data"], "contains the input")
    assert sorted(os.listdir(tmp_path / "data")) == before


def test_corpus_writers_never_write_through_a_link_at_their_temporary_names(tmp_path):
    """<prefix>.bin.tmp.<pid> (and the .idx, sidecar and .patches ones) are predictable names: a link planted
    there is refused, its target untouched (it used to be truncated and written)."""
    from mot_parallel.data.continuous_store import ContinuousWriter
    from mot_parallel.data.indexed import IndexedWriter
    target = tmp_path / "precious.txt"
    target.write_text("weeks of work")
    for suffix, make in ((".bin", lambda p: IndexedWriter(p)),
                         (".image.patches", lambda p: ContinuousWriter(p, np.uint16, {1: ("image", {})}))):
        prefix = str(tmp_path / f"c{len(suffix)}")
        link = f"{prefix}{suffix}.tmp.{os.getpid()}"
        os.symlink(target, link)
        with pytest.raises(OutputError, match="exists"):
            make(prefix)
        assert target.read_text() == "weeks of work" and os.path.islink(link)
        os.remove(link)
    w = IndexedWriter(str(tmp_path / "ok"))
    w.add_document([(np.arange(3), 0)])
    os.symlink(target, str(tmp_path / "ok.idx.tmp.") + str(os.getpid()))
    with pytest.raises(OutputError, match="exists"):
        w.close({"format": "mot_parallel/1"})
    w.abort()
    assert target.read_text() == "weeks of work" and not os.path.exists(tmp_path / "ok.bin")


@pytest.mark.parametrize("name", [".png", "..png", "d/.PNG", "", "x.png.txt", "x"])
def test_a_png_output_needs_a_name_before_its_extension(tmp_path, name):
    """matplotlib writes NAME.png for any name without a .png extension, ".png" included (os.path.splitext
    sees no extension in it): a name the check did not see would be written, over a user's file."""
    from mot_parallel.studies.png_files import check_png
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".PNG.png").write_text("a user's file")
    with pytest.raises(OutputError, match="ending in .png"):
        check_png("--plot", str(tmp_path / name) if name else name)
    assert check_png("--plot", str(tmp_path / "d" / "A.PNG"))


def test_save_png_replaces_a_link_planted_at_its_name_and_never_follows_it(tmp_path):
    """A checked name can become a symbolic link while the tool works: save_png writes a new file beside it and
    renames it over the name, so the link's target keeps its bytes; no temporary file is left."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mot_parallel.studies.png_files import save_png
    target, path = tmp_path / "target.txt", tmp_path / "p.png"
    target.write_text("a user's file")
    os.symlink(target, path)
    fig = plt.figure(figsize=(1, 1))
    assert save_png(fig, str(path), "test plot", dpi=20) == str(path)
    assert target.read_text() == "a user's file" and not path.is_symlink() and png_is_ours(str(path))
    assert sorted(os.listdir(tmp_path)) == ["p.png", "target.txt"]
    (tmp_path / "f").write_text("a file, not a directory")
    with pytest.raises(OutputError, match="cannot be written"):
        save_png(fig, str(tmp_path / "f" / "q.png"), "test plot", dpi=20)


def test_hard_links_and_overlong_names_are_refused_before_work(tmp_path):
    from mot_parallel.studies.png_files import check_png
    from mot_parallel.outputs import refuse_overlap
    (tmp_path / "in.png").write_bytes(b"data")
    os.link(tmp_path / "in.png", tmp_path / "alias.png")
    with pytest.raises(OutputError, match="is the input"):
        refuse_overlap("--out", str(tmp_path / "alias.png"), [("--in", str(tmp_path / "in.png"))])
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        check_png("--out", str(tmp_path / ("a" * 256 + ".png")))
    assert check_png("--out", str(tmp_path / ("a" * 251 + ".png")))


def test_an_overwritten_corpus_leaves_no_files_of_the_old_one(tmp_path):
    """--overwrite replaces a corpus as a whole: the patches (and finiteness stamps) of a continuous modality the
    new corpus lacks are removed with it; a file its sidecar does not declare, or one a crafted sidecar names
    through a path, is never touched."""
    from mot_parallel.data.continuous_store import ContinuousWriter
    from mot_parallel.data.indexed import IndexedWriter
    prefix, info = str(tmp_path / "c"), {"patch_dim": 2}

    def write(modalities):
        w = ContinuousWriter(prefix, np.uint16, {m + 1: (name, info) for m, name in enumerate(modalities)},
                             overwrite=True)
        w.add_document([(np.ones((1, 2)), 1), (np.array([3]), 0)])
        w.close({})
    write(["image", "speech"])
    open(prefix + ".speech.patches.checked", "w").write("stamp")
    open(prefix + ".video.patches", "w").write("a user's file")
    write(["image"])
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.idx", "c.image.patches", "c.mot.json", "c.video.patches"]
    w = IndexedWriter(prefix, overwrite=True)   # a token corpus over it: no patches at all
    w.add_document([(np.array([1, 2]), 0)])
    w.close({"format": "mot_parallel/1"})
    assert sorted(os.listdir(tmp_path)) == ["c.bin", "c.idx", "c.mot.json", "c.video.patches"]
    (tmp_path / "d").mkdir()
    open(tmp_path / "d" / "x.patches", "w").write("a user's file elsewhere")
    sidecar = json.load(open(prefix + ".mot.json"))
    json.dump(dict(sidecar, continuous={"/../d/x": info}), open(prefix + ".mot.json", "w"))
    IndexedWriter(prefix, overwrite=True).close({"format": "mot_parallel/1"})
    assert (tmp_path / "d" / "x.patches").read_text() == "a user's file elsewhere"
