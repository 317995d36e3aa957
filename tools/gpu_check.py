"""The GPU check: every open GPU question of mot_parallel answered by one command on one GPU, in < 8 min.

    # 1. where there is network (once), from the repository root: the wheels the bare GPU machine lacks
    echo /.whl/ >> .git/info/exclude
    python tools/gpu_check.py --prepare-wheels .whl [--python-version 3.12 ...]
    # 2. on the GPU machine (offline), from the repository root; results in OUT/gpu_check.{md,json,log}
    PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --wheels .whl --out OUT
    # on a CPU machine: the same script end to end at tiny shapes (tests/tools/test_gpu_check.py runs it)
    python tools/gpu_check.py --cpu-smoke --out /tmp/gpu_check_smoke

What --prepare-wheels downloads (pure-python or manylinux x86-64 wheels for each --python-version, default
3.12 (what current GPU containers ship) and this interpreter's; ~6 MB per version): deepspeed built with
DS_BUILD_OPS=0 (no compiled ops: the trainer uses torch's fused AdamW), pyyaml, safetensors, pytest, and
everything they require (hjson, pydantic, pydantic-core, annotated-types, typing-inspection,
typing-extensions, py-cpuinfo, msgpack, psutil, ninja, packaging, tqdm, einops, pluggy, iniconfig, pygments,
...: read from this environment's package metadata), NOT torch, numpy or triton; versions pinned to this
environment's, listed in DIR/manifest.json. --wheels installs, with `pip install --no-index --no-deps --target
<work-dir>/site`, only those the GPU machine's python lacks (its environment is not modified; the parts see
them on PYTHONPATH).

Parts, in order, each in its own process with its own time limit (a failure or timeout is recorded and
the next part runs; the report is rewritten after every part):
  device       15 s  the device, and the bf16 GEMM rate it reaches (8192^3)
  bench_layer  60 s  tools/bench_layer.py, bf16, a 7B layer (h 4096, 32 heads, FFN 11008, seq 4096, batch 1):
                     dense, MoT M=2/3, naive M=2/3: ms, ratio to dense, TFLOP/s and fraction of peak
  grouped_gemm 25 s  the 4 GEMMs of that layer per modality: loop vs torch._grouped_mm (stacked once / per call)
  attention    90 s  documents / image-bidirectional masks: SDPA dense mask vs FlexAttention block mask
  no_sync      50 s  a whole model training step under CUDA sync-debug mode (warn: sites; error: must pass)
  deepspeed   120 s  launch/pretrain.py's trainer, bf16, ~1.05 B parameters (3 modalities, h 2048, 6 layers,
                     seq 4096, micro-batch 2), 40 steps, killed after the last (no checkpoint write):
                     tokens/s, MFU, peak memory vs the planner, sync sites of whole DeepSpeed steps
  gpu_tests   100 s  pytest -m gpu over the test files that have gpu-marked tests
--budget-s (default 440) caps the parts together (a part gets at most what is left; one that would not
get 15 s is reported as skipped). FlexAttention compiles once per shape in each process (~20-40 s).
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mot_parallel.cli import add_overwrite, existing_dir, float_in, user_errors  # noqa: E402
from mot_parallel.outputs import check_dir, claim_scratch, mark, refuse_overlap  # noqa: E402

def python_version(text):
    if not re.fullmatch(r"3\.\d{1,2}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Python version such as 3.12")
    return text


REPORT, SCRATCH, WHEELS = "gpu_check report", "gpu_check work directory", "gpu_check wheels"  # output marks

PARTS = [("device", 15), ("bench_layer", 60), ("grouped_gemm", 25), ("attention", 90), ("no_sync", 50),
         ("deepspeed", 120), ("gpu_tests", 100)]  # gpu_tests last: 3 FlexAttention compiles, the least bounded
FULL = {"dtype": "bf16", "rounds": 10, "ceiling_n": 8192, "tokens": 4096, "hidden": 4096, "heads": 32,
        "kv_heads": 32, "head_dim": 128, "ffn": 11008, "seq": 4096, "doc_lengths": [256, 1536], "image": 1024,
        "text_run": [64, 512], "batch": 1,
        "step_model": {"hidden": 1024, "layers": 2, "heads": 8, "kv_heads": 8, "ffn": 2816, "vocab": 32768,
                       "seq": 4096}}
SMOKE = {"dtype": "fp32", "rounds": 2, "ceiling_n": 128, "tokens": 96, "hidden": 64, "heads": 4, "kv_heads": 2,
         "head_dim": 16, "ffn": 96, "seq": 128, "doc_lengths": [16, 64], "image": 32, "text_run": [8, 24],
         "batch": 1,
         "step_model": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 96, "vocab": 512, "seq": 128}}
DS_FULL = ["model.hidden_size=2048", "model.num_layers=6", "model.num_heads=16", "model.vocab_size=32768",
           "model.max_seq_len=4096", "model.qk_norm=true", "train.micro_batch_size=2", "train.precision=bf16"]
DS_SMOKE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.vocab_size=512",
            "model.max_seq_len=128", "train.micro_batch_size=2", "data.demo_documents=300"]
DS_COMMON = ["model.modalities=[text,image,speech]", "train.steps=1000", "checkpoint.interval=0",
             "checkpoint.resume=none", "checkpoint.save_on_sigterm=false", "logging.tensorboard=false"]
WHEEL_ROOTS = ["deepspeed", "pyyaml", "safetensors", "pytest"]  # + all they require (gpu_check_wheels.py)


def run_cmd(cmd, timeout, env, cwd=ROOT):
    """(return code or 'timeout', stdout, stderr); the whole process group dies on timeout."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=max(timeout, 1))
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return "timeout", out, err


def part_in_child(name, shape, args, env, timeout):
    out = os.path.join(args.work_dir, f"{name}.json")
    rc, _, err = run_cmd([sys.executable, __file__, "--run-part", name, "--part-out", out, "--shape",
                          json.dumps(shape)], timeout, env)
    if rc != 0:
        return {"status": "timeout" if rc == "timeout" else "error", "error": _last_line(err), "log": err}
    return dict(json.load(open(out)), status="ok", log=err)


def part_gpu_tests(shape, args, env, timeout):
    tests = os.path.join(ROOT, "tests")
    files = sorted(os.path.join("tests", f) for f in os.listdir(tests) if f.startswith("test_") and f.endswith(".py")
                   and "mark.gpu" in open(os.path.join(tests, f)).read())
    xml = os.path.join(args.work_dir, "gpu_tests.xml")
    rc, out, err = run_cmd([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                            "--continue-on-collection-errors", f"--junitxml={xml}", *files], timeout, env)
    if not os.path.exists(xml):
        return {"status": "timeout" if rc == "timeout" else "error", "error": _last_line(out + err), "log": out + err}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [(c.get("classname", "") + "::" + c.get("name", ""), (c[0].get("message") or "")[:200])
              for c in suite.iter("testcase") if len(c) and c[0].tag in ("failure", "error")]
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    rows = [("pytest -m gpu", f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped",
             ", ".join(files))] + [("  FAILED", name, msg) for name, msg in failed]
    status = "ok" if rc in (0, 5) else "failed"  # 5: nothing selected
    return {"status": status, "rows": rows, "data": dict(n, failed=failed), "log": out[-4000:]}


def part_bench_layer(shape, args, env, timeout):
    s = shape
    cmd = [sys.executable, os.path.join(ROOT, "tools", "bench_layer.py"), "--json", "--device", "auto",
           "--dtype", s["dtype"], "--hidden", str(s["hidden"]), "--heads", str(s["heads"]), "--ffn", str(s["ffn"]),
           "--seq", str(s["seq"]), "--batch", "1", "--rounds", str(max(1, s["rounds"] // 2)), "--warmup", "1"]
    rc, out, err = run_cmd(cmd, timeout, env)
    if rc != 0:
        return {"status": "timeout" if rc == "timeout" else "error", "error": _last_line(err), "log": err}
    data = json.loads(out)
    rows = []
    for r in data["results"]:
        peak = f" ({r['of_peak']:.0%} of peak)" if r.get("of_peak") is not None else ""
        kind = {"dense": "dense", "mot": "MoT", "naive": "naive MoT"}[r["variant"]]
        label = kind if kind == "dense" else f"{kind} M={r['modalities']}"
        rows.append((label, f"{r['ms']:.2f} ms, {r['tflops']:.1f} TFLOP/s{peak}", f"x{r['ratio_to_dense']:.3f} dense"))
    return {"status": "ok", "rows": rows, "data": data, "log": err}


def part_deepspeed(shape, args, env, timeout):
    smoke = args.cpu_smoke
    run_dir, probe = os.path.join(args.work_dir, "ds_run"), os.path.join(args.work_dir, "ds_probe.json")
    shutil.rmtree(run_dir, ignore_errors=True)
    target, warmup, interval = (6, 2, 2) if smoke else (40, 10, 5)
    overrides = (DS_SMOKE if smoke else DS_FULL) + DS_COMMON + [f"run.output_dir={run_dir}",
                                                                f"logging.interval={interval}"]
    log_path = os.path.join(args.work_dir, "ds_run.log")  # a file, not a pipe: nobody drains a pipe meanwhile
    with open(log_path, "w") as log_file:
        p = subprocess.Popen([sys.executable, __file__, "--ds-child", probe, "--", *overrides], cwd=ROOT, env=env,
                             stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    metrics, t0, status = os.path.join(run_dir, "metrics.jsonl"), time.time(), "timeout"
    while time.time() - t0 < timeout:
        if p.poll() is not None:
            status = "error"
            break
        if _last_step(metrics) >= target:
            status = "ok"
            break
        time.sleep(0.5)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)  # SIGKILL: no checkpoint write (GBs of optimizer state)
    p.wait()
    log = open(log_path).read()
    if status != "ok" and not (os.path.exists(metrics) and os.path.exists(probe)):
        return {"status": status, "error": _last_line(log), "log": log}
    from mot_parallel.studies.benchmarks.step_probe import ds_summary
    return dict(ds_summary(metrics, probe, warmup), status=status, log=log[-6000:])


RUNNERS = {"device": "device_ceiling", "grouped_gemm": "grouped_gemm", "attention": "attention_masks",
           "no_sync": "no_sync_step", "gpu_tests": part_gpu_tests, "bench_layer": part_bench_layer,
           "deepspeed": part_deepspeed}


def _last_step(metrics_path):
    """The last complete step record's step in metrics.jsonl (0 if none yet; a line may be half-written)."""
    step = 0
    if os.path.exists(metrics_path):
        for line in open(metrics_path):
            try:
                step = max(step, json.loads(line)["step"])
            except (ValueError, KeyError):
                pass
    return step


def _last_line(text):
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


def write_report(report, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
        json.dump({k: v for k, v in report.items() if k != "logs"}, f, indent=1, default=str)
    with open(os.path.join(out_dir, "gpu_check.log"), "w") as f:
        for name, log in report["logs"].items():
            f.write(f"===== {name}\n{log}\n")
    dev = next((r[1] for r in report["parts"].get("device", {}).get("rows", []) if r[0] == "device"), "?")
    lines = [f"# mot_parallel GPU check ({report['mode']})", "",
             f"{dev}; started {report['started']}; {report['total_s']:.0f} s; wheels: {report['install']}", "",
             "| part | line | result | note |", "| --- | --- | --- | --- |"]
    for name, res in report["parts"].items():
        head = f"{res['status']} in {res.get('seconds', 0):.0f} s"
        if res.get("error"):
            head += f": {res['error']}"
        lines.append(f"| **{name}** | | {head} | |")
        lines += ["| | " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in res.get("rows", [])]
    with open(os.path.join(out_dir, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check"), help="report directory")
    ap.add_argument("--work-dir", default="/tmp/mot_gpu_check", help="scratch: installed wheels, the DeepSpeed run")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (the test suite runs this)")
    ap.add_argument("--parts", default=",".join(p for p, _ in PARTS), help="comma-separated subset, in order")
    ap.add_argument("--budget-s", type=float_in(0.0, 7 * 86400.0), default=440.0,
                    help="wall-clock cap for all parts together")
    ap.add_argument("--wheels", type=existing_dir,
                    help="install the wheels of --prepare-wheels that this python lacks, first")
    ap.add_argument("--prepare-wheels", metavar="DIR", help="download/build the wheels into DIR and exit")
    ap.add_argument("--python-version", action="append", type=python_version,
                    help="target python of --prepare-wheels (repeatable), e.g. 3.12")
    ap.add_argument("--run-part", help=argparse.SUPPRESS)
    ap.add_argument("--part-out", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--ds-child", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    add_overwrite(ap)
    args = ap.parse_args(argv)
    if args.prepare_wheels:
        with user_errors():
            check_dir("--prepare-wheels", args.prepare_wheels, WHEELS, overwrite=args.overwrite)
        from gpu_check_wheels import prepare
        os.makedirs(args.prepare_wheels, exist_ok=True)
        mark(args.prepare_wheels, WHEELS)
        return prepare(args.prepare_wheels, WHEEL_ROOTS, args.python_version)
    if args.run_part:  # child: one in-process part
        from mot_parallel.studies.benchmarks import kernels, step_probe
        fn = getattr(kernels, RUNNERS[args.run_part], None) or getattr(step_probe, RUNNERS[args.run_part])
        result = fn(json.loads(args.shape))
        with open(args.part_out, "w") as f:
            json.dump(result, f, default=str)
        return 0
    if args.ds_child:
        from mot_parallel.studies.benchmarks.step_probe import ds_child
        ds_child(args.ds_child, args.overrides)
        return 0
    unknown = set(args.parts.split(",")) - {p for p, _ in PARTS}
    if unknown:
        sys.exit(f"error: --parts: unknown part(s) {sorted(unknown)}; choose from {[p for p, _ in PARTS]}")
    with user_errors():  # the report directory is new (or an earlier report, with --overwrite); the scratch ours
        check_dir("--out", args.out, REPORT, [("--wheels", args.wheels)], args.overwrite)
        refuse_overlap("--work-dir", args.work_dir, [("--wheels", args.wheels)])
        refuse_overlap("--work-dir", args.work_dir, [("--out", args.out)], "the report directory")
        claim_scratch(args.work_dir, SCRATCH, "--work-dir")
    os.makedirs(args.out, exist_ok=True)
    mark(args.out, REPORT)
    return orchestrate(args)


def orchestrate(args):
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p),
               DS_BUILD_OPS="0", TOKENIZERS_PARALLELISM="false")
    install = "none needed"
    if args.wheels:
        from gpu_check_wheels import install_missing
        site = os.path.join(args.work_dir, "site")
        install = install_missing(args.wheels, site)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, site] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if args.cpu_smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""
    shape = SMOKE if args.cpu_smoke else FULL
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "install": install, "shape": shape, "parts": {}, "logs": {}, "total_s": 0.0}
    wanted = args.parts.split(",")
    deadline = t0 + args.budget_s
    for name, budget in [(p, b) for p, b in PARTS if p in wanted]:
        left = deadline - time.time()
        start = time.time()
        if left < min(budget, 15):
            res = {"status": "skipped", "error": f"{left:.0f} s left of --budget-s {args.budget_s:.0f}"}
        else:
            runner = RUNNERS[name]
            try:
                res = runner(shape, args, env, min(budget, left)) if callable(runner) else \
                    part_in_child(name, shape, args, env, min(budget, left))
            except Exception as e:  # noqa: BLE001 - one broken part must not stop the others
                res = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        res["seconds"] = time.time() - start
        report["logs"][name] = res.pop("log", "")
        report["parts"][name] = res
        report["total_s"] = time.time() - t0
        write_report(report, args.out)
        print(f"[gpu_check] {name}: {res['status']} in {res['seconds']:.0f} s" +
              (f" ({res['error']})" if res.get("error") else ""), flush=True)
    print(open(os.path.join(args.out, "gpu_check.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
