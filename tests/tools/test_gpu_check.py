"""tools/gpu_check.py cannot rot unseen: its --cpu-smoke runs every part end to end at tiny shapes on the
CPU (the same processes, parsers and report as on a GPU), and its plumbing isolates failures:
- every part reports ok with rows; the JSON and the Markdown table hold every part; the block-sparse
  attention agrees with SDPA (max |diff| <= 1e-5, fp32); the DeepSpeed run logged tokens/s and the
  planner's estimate;
- a part that raises is recorded and the next still runs; a part's process group is killed at its time
  limit; a part that does not fit the budget is skipped; unknown part names are refused;
- the wheels: the requirement closure follows package metadata and leaves torch/numpy out; a missing
  package is installed offline into the target directory; nothing is installed when everything is present.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from mot_parallel.outputs import MARKER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "tools", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    spec.loader.exec_module(mod)
    return mod


def test_cpu_smoke_runs_every_part(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check.py"), "--cpu-smoke",
                           "--out", str(out), "--work-dir", str(work)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(out / "gpu_check.json"))
    names = [p for p, _ in _tool().PARTS]
    assert list(report["parts"]) == names
    bad = {n: (r["status"], r.get("error")) for n, r in report["parts"].items() if r["status"] != "ok"}
    assert not bad, f"{bad}\n{open(out / 'gpu_check.log').read()[-5000:]}"
    assert all(r["rows"] for r in report["parts"].values())
    attn = report["parts"]["attention"]["data"]
    assert attn["documents/flex"]["max_abs_diff_vs_sdpa"] <= 1e-5
    assert attn["image-bidirectional/flex"]["max_abs_diff_vs_sdpa"] <= 1e-5
    ds = report["parts"]["deepspeed"]["data"]
    assert ds["tokens_per_s"] > 0 and ds["planner"]["total"] > 0
    table = open(out / "gpu_check.md").read()
    assert all(f"| **{n}** |" in table for n in names) and "pytest -m gpu" in table
    assert sorted(os.listdir(out)) == [MARKER, "gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_a_failing_part_is_recorded_and_the_next_runs(tmp_path):
    tool = _tool()

    def broken(shape, args, env, timeout):
        raise RuntimeError("CUDA error: an illegal memory access")

    tool.RUNNERS.update(device=broken, gpu_tests=lambda shape, args, env, timeout: {
        "status": "ok", "rows": [("pytest -m gpu", "1 passed", "")]})
    assert tool.main(["--cpu-smoke", "--parts", "device,gpu_tests", "--out", str(tmp_path / "report"),
                      "--work-dir", str(tmp_path / "w")]) == 0
    parts = json.load(open(tmp_path / "report" / "gpu_check.json"))["parts"]
    assert parts["device"]["status"] == "error" and "illegal memory access" in parts["device"]["error"]
    assert parts["gpu_tests"]["status"] == "ok"


def test_budget_skips_and_unknown_parts_are_refused(tmp_path):
    tool = _tool()
    assert tool.main(["--cpu-smoke", "--parts", "device", "--budget-s", "0", "--out", str(tmp_path / "report"),
                      "--work-dir", str(tmp_path / "w")]) == 0
    assert json.load(open(tmp_path / "report" / "gpu_check.json"))["parts"]["device"]["status"] == "skipped"
    with pytest.raises(SystemExit, match="unknown part"):
        tool.main(["--parts", "device,warp_drive", "--out", str(tmp_path / "report"), "--work-dir", str(tmp_path / "w")])


def test_time_limit_kills_the_process_group():
    tool = _tool()
    t = time.time()
    rc, _, _ = tool.run_cmd(["bash", "-c", "sleep 60 & sleep 60"], 1, dict(os.environ))
    assert rc == "timeout" and time.time() - t < 30


def test_nothing_installed_when_everything_is_present(tmp_path):
    _tool()  # puts tools/ on sys.path
    from gpu_check_wheels import install_missing
    (tmp_path / "manifest.json").write_text(json.dumps({"packages": {"pytest": "0", "torch": "0"}}))
    assert install_missing(str(tmp_path), str(tmp_path / "site")) == "all present"


def test_wheel_closure_follows_requirements_and_leaves_torch_out():
    _tool()
    from gpu_check_wheels import requirement_closure
    pins = requirement_closure(["deepspeed", "pytest"], ["3.12"])
    assert {"deepspeed", "hjson", "pydantic", "pydantic-core", "pluggy", "iniconfig"} <= set(pins)
    assert not {"torch", "numpy"} & set(pins) and all(pins.values())



def test_offline_install_of_a_missing_wheel(tmp_path):
    """A hand-made wheel of a package this python lacks is installed offline into the target directory."""
    import zipfile
    _tool()
    from gpu_check_wheels import install_missing
    wheels = tmp_path / "whl"
    wheels.mkdir()
    info = "mot_fake_probe-0.1.dist-info"
    files = {"mot_fake_probe/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: mot-fake-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheels / "mot_fake_probe-0.1-py3-none-any.whl", "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    (wheels / "manifest.json").write_text(json.dumps({"packages": {"mot-fake-probe": "0.1", "pytest": "0"}}))
    site = tmp_path / "site"
    assert install_missing(str(wheels), str(site)) == "installed mot-fake-probe==0.1"
    out = subprocess.run([sys.executable, "-c", "import mot_fake_probe; print(mot_fake_probe.VALUE)"],
                         env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert out.stdout.strip() == "42", out.stderr
