"""The README and docs/ pages tell the truth a user can check by copying: every `bash` line parses with its
script's own argument parser (and runs when it is a --help/--dry-run/--check command), every `bash illustrative`
line names scripts, files, options and config keys that exist, python and yaml fragments load, links and
backticked paths and config keys resolve, and the README's versions table matches setup.py and the constraints
CI installs. The convention is in tests/doc_commands.py."""
import json
import os
import re
import subprocess
import sys

import pytest

from doc_commands import ROOT, commands, fences, fragment_errors, pages, prose_errors, static_errors, target

PAGES = pages()
FENCES = [f for p in PAGES for f in fences(p)]
COMMANDS = [c for f in FENCES if f.lang == "bash" for c in commands(f)]


def test_readme_is_a_front_door():
    """The README stays short enough to read in one sitting; details live in docs/ pages it links."""
    lines = open(os.path.join(ROOT, "README.md")).read().split("\n")
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move details to docs/"
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)", "\n".join(lines)))
    assert linked == {p for p in PAGES if p.startswith("docs/")}, "every docs page is in the README's table"


def test_pages_use_the_fence_convention():
    """Every fence names its kind; there is something to check on every page with commands."""
    assert len(COMMANDS) > 30
    assert sum(not c.illustrative for c in COMMANDS) > 25


@pytest.mark.parametrize("page", PAGES)
def test_prose_references_exist(page):
    """Links (and their #headings), backticked repository paths and backticked config keys exist."""
    assert prose_errors(page) == []


def test_commands_name_what_exists():
    """Scripts, repository files, --options and config keys named by any command (illustrative too) exist."""
    errors = [f"{c.where}: {c.text}\n    {e}" for c in COMMANDS for e in static_errors(c)]
    assert not errors, "\n".join(errors)


def test_commands_run_as_written(tmp_path):
    """Each `bash` line parses with its script's parser (its --config and overrides load); --help, --dry-run
    and --check lines run whole. One process for all, so the tools' imports load once."""
    assert COMMANDS
    items = [{"where": c.where, "argv": c.argv} for c in COMMANDS
             if not c.illustrative and target(c.argv)[0] in ("script", "module")]
    (tmp_path / "items.json").write_text(json.dumps(items))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "doc_commands.py"),
                           str(tmp_path / "items.json"), str(tmp_path / "results.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == len(items)
    failed = [f"{r['where']}: {r['tail'].strip()[-600:]}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)


def test_fragments_load():
    """python fences compile and import names that exist; yaml fences are valid configs; json parses."""
    errors = [f"{f.page}:{f.line}: {e}" for f in FENCES for e in fragment_errors(f)]
    assert not errors, "\n".join(errors)


def test_the_checker_catches_stale_docs(tmp_path):
    """A renamed option, a missing script or name, an unknown config key and an unmarked foreign program are
    caught."""
    from doc_commands import Command
    bad = {"python tools/plan.py --config configs/demo_cpu.yaml --gpu-count 8": "has no option --gpu-count",
           "python tools/no_such_tool.py --help": "does not exist",
           "launch/demo.sh train.stepz=20": "no config key train.stepz",
           "python tools/flops.py --config configs/nope.yaml": "configs/nope.yaml does not exist",
           "sbatch launch/slurm/pretrain.sbatch configs/demo_cpu.yaml": "mark the fence `bash illustrative`"}
    for text, message in bad.items():
        cmd = Command("x.md", 1, text, text.split(), False)
        assert any(message in e for e in static_errors(cmd)), (text, static_errors(cmd))
    from doc_commands import Fence, run_one
    assert fragment_errors(Fence("x.md", 1, "python", False, "from mot_parallel.megatron import MoTGPTModell")) == \
        ["mot_parallel.megatron has no MoTGPTModell"]
    assert "model.hiden_size" in fragment_errors(Fence("x.md", 1, "yaml", False, "model:\n  hiden_size: 8"))[0]
    ok, tail = run_one(["python", "launch/pretrain.py", "--config", "configs/demo_cpu.yaml", "train.stepz=3"])
    assert not ok and "train.steps" in tail  # the override is loaded: the unknown key is named, with the fix


def _setup_requirements():
    """{package: spec} of setup.py's install_requires and every extra but dev, and python_requires."""
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    kw = {n.arg: n.value for n in ast.walk(tree) if isinstance(n, ast.keyword)}
    reqs = ast.literal_eval(kw["install_requires"])
    extras = ast.literal_eval(kw["extras_require"])
    reqs += [r for name, rs in extras.items() if name != "dev" for r in rs]
    out = {"python": ast.literal_eval(kw["python_requires"])}
    for r in reqs:
        name, spec = re.match(r"^([A-Za-z0-9_.-]+)(.*)$", r).groups()
        out[name.lower()] = spec or "any"
    return out


def test_versions_table_matches_setup_and_constraints():
    """The README's versions table: every dependency setup.py declares (extras but dev), with setup.py's range
    and the constraints file's pin, and each version said to be tested elsewhere inside the admitted range."""
    from packaging.specifiers import SpecifierSet
    text = open(os.path.join(ROOT, "README.md")).read()
    table = text[text.index("<!-- versions table"):].split("\n\n")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.split("\n")[3:]]
    constraints = open(os.path.join(ROOT, "tests", "constraints.txt")).read()
    pins = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)$", constraints, re.M)}
    pins["python"] = re.search(r"CI's Python: (\S+)$", constraints, re.M).group(1)
    required = _setup_requirements()
    seen = {}
    for package, admitted, tested, also in rows:
        name = package.split()[0]
        seen[name] = admitted
        assert admitted == required.get(name), f"{name}: README says {admitted}, setup.py {required.get(name)}"
        assert tested == pins.get(name), f"{name}: README says {tested}, tests/constraints.txt {pins.get(name)}"
        spec = SpecifierSet("" if admitted == "any" else admitted)
        assert tested in spec, f"{name} {tested} is outside setup.py's {admitted}"
        for version in re.findall(r"\b(\d+\.\d+\.\d+)\b", also):
            assert version in spec, f"{name} {version} is outside setup.py's {admitted}"
    assert set(seen) == set(required), "rows for exactly setup.py's dependencies"
