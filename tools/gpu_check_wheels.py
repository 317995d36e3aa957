"""Wheels for tools/gpu_check.py's bare, offline GPU machine (see its docstring for the two commands).

prepare(DIR): with network, into DIR: the root distributions and everything they require (read from this
environment's package metadata, markers evaluated for each target python; torch and numpy excluded), at
this environment's versions (pinned, so they are known to work together), as wheels for each target python
(manylinux x86-64 or pure python); deepspeed is built with DS_BUILD_OPS=0 when the index has no wheel.
DIR/manifest.json lists them.
install_missing(DIR, SITE): offline, `pip install --no-index --no-deps --target SITE` of the manifest's
distributions that this python does not have; the machine's own environment is never modified.
"""
import json
import os
import re
import subprocess
import sys
from importlib import metadata

PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64",
             "manylinux2010_x86_64"]
MAX_MB = 48  # the GPU machine receives the working tree with the wheels: 64 MiB in all
EXCLUDED = {"torch", "numpy", "triton"}  # come with the GPU machine's torch (numpy: 16 MB per python)


def _version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots, python_versions):
    """{distribution: this environment's version} for `roots` and all they require on any target python."""
    try:  # only the preparing side needs it (the bare GPU machine may not have packaging)
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    pins, todo = {}, list(roots)
    while todo:
        name = _canonical(todo.pop())
        if name in pins or name in EXCLUDED:
            continue
        pins[name] = _version(name)
        if pins[name] is None:
            sys.exit(f"error: {name} is not installed here; install it first (the wheels are pinned to this "
                     "environment's versions)")
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or any(req.marker.evaluate({"python_version": v, "extra": ""})
                                         for v in python_versions):
                todo.append(req.name)
    return pins


def prepare(out_dir, roots, python_versions=None):
    versions = python_versions or sorted({"3.12", f"{sys.version_info.major}.{sys.version_info.minor}"})
    os.makedirs(out_dir, exist_ok=True)
    pins = requirement_closure(roots, versions)
    env = dict(os.environ, DS_BUILD_OPS="0")
    ds = f"deepspeed=={pins['deepspeed']}"
    if subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out_dir,
                       ds], env=env).returncode:
        sys.exit(f"error: could not build a wheel of {ds}")
    for py in versions:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation",
               "cp", "--python-version", py, "-d", out_dir] + [a for p in PLATFORMS for a in ("--platform", p)]
        if subprocess.run(cmd + [f"{n}=={v}" for n, v in pins.items() if n != "deepspeed"]).returncode:
            sys.exit(f"error: pip download failed for python {py}")
    size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)) / 2**20
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({"packages": pins, "python_versions": versions, "size_mb": round(size, 1)}, f, indent=1)
    print(f"{len(os.listdir(out_dir)) - 1} wheels, {size:.1f} MB, for python {versions}, in {out_dir}")
    if size > MAX_MB:
        sys.exit(f"error: {size:.0f} MB of wheels exceeds {MAX_MB} MB; give fewer --python-version")
    return 0


def install_missing(wheel_dir, site):
    """Install what this python lacks; returns a one-line summary for the report."""
    path = os.path.join(wheel_dir, "manifest.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} missing: prepare the wheels with tools/gpu_check.py --prepare-wheels")
    manifest = json.load(open(path))
    need = [f"{n}=={v}" for n, v in manifest["packages"].items() if _version(n) is None]
    if not need:
        return "all present"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", site, "--find-links", wheel_dir, *need], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: offline install of {need} failed:\n{proc.stderr[-3000:]}")
    return "installed " + ", ".join(need)
