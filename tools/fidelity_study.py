"""The fidelity study (issue 12) and the controlled experiments behind it (issue 16), one command each.

    python tools/fidelity_study.py study [--seeds 1 2]             # dense / full MoT / FFN-only, real-data corpus
    python tools/fidelity_study.py grid --corpus real|demo|textured|vague [--seeds 1 2] [--rows dense,mot,...]
    ... [--out runs/fidelity] [--nproc 2] [--max-load 4] [--report] [--dry-run]

`study` trains configs/study/{dense,mot,ffn}.yaml (equal FLOPs per token, same data order, optimiser and
schedule; frequent evaluations) for every seed, then compares each seed's runs with tools/compare_runs.py's
analysis: the step / FLOP / wall-clock fraction at which MoT and FFN-only first reach dense's final validation
loss, per modality, with the spread over seeds. Writes <out>/study.md (tables), <out>/study.json and one
loss-curve plot per seed (<out>/study_seed<N>.png). Needs the real-data corpus
(python tools/build_real_corpus.py --output-prefix runs/real_corpus/real).

`grid` is issue 16's table (untie variants, shared_start copies) plus QK-norm x learning rate, every row at
200 steps (--steps) on the demo model (configs/demo_cpu.yaml or configs/real_cpu.yaml, QK-norm and LR pinned per row so
the table does not depend on the configs' defaults), with logging.diagnostics on. Writes <out>/grid_<corpus>.md:
final validation loss and training loss (mean of the last 4 logged steps) per modality, 'seed a / seed b', and
the max attention logit per (query, key) modality pair.

Runs are launched one at a time with torchrun (--nproc processes), each into <out>/<suite>/<run>_s<seed>/
(a finished run, one with a COMPLETED file, is kept and not rerun; an interrupted one resumes from its last
checkpoint). Before each run the tool waits while the 1-minute load average is above --max-load (a shared
machine). --report only rebuilds the tables from existing runs; --dry-run prints the commands.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mot_parallel.studies.analysis import study_report as report  # noqa: E402
from mot_parallel.cli import int_in, positive_float, seed  # noqa: E402
from mot_parallel.outputs import OutputError, check_own_dir, mark  # noqa: E402

STUDY_DIR = "fidelity_study directory"  # the output mark of --out

MODALITIES = ["text", "image", "speech"]
STUDY = [("dense", "configs/study/dense.yaml"), ("mot", "configs/study/mot.yaml"), ("ffn", "configs/study/ffn.yaml")]
CORPUS_CONFIG = {"demo": "configs/demo_cpu.yaml", "real": "configs/real_cpu.yaml",
                 "textured": "configs/demo_cpu.yaml", "vague": "configs/demo_cpu.yaml"}  # data/demo_corpus.py variants
DENSE, ATTN_FFN = "model.untie=[]", "model.untie=[attention,ffn]"


def _pin(lr="3e-3", qk="false"):
    return [f"train.optimizer.lr={lr}", f"model.qk_norm={qk}"]


# (key, label, overrides): issue 16's table first (its LR 3e-3, no QK-norm), then QK-norm x LR
GRID = [
    ("dense", "dense", [DENSE] + _pin()),
    ("mot", "full MoT", _pin()),
    ("attn_ffn", "[attention, ffn]", [ATTN_FFN] + _pin()),
    ("ffn", "[ffn]", ["model.untie=[ffn]"] + _pin()),
    ("attn", "[attention]", ["model.untie=[attention]"] + _pin()),
    ("norms", "[norms]", ["model.untie=[norms]"] + _pin()),
    ("mot_shared", "full MoT, shared_start", ["model.init.modality_copies=shared_start"] + _pin()),
    ("dense_qk", "dense, QK-norm", [DENSE] + _pin(qk="true")),
    ("mot_qk", "full MoT, QK-norm", _pin(qk="true")),
    ("dense_lr1e-3", "dense, lr 1e-3", [DENSE] + _pin("1e-3")),
    ("mot_lr1e-3", "full MoT, lr 1e-3", _pin("1e-3")),
    ("dense_qk_lr1e-3", "dense, QK-norm, lr 1e-3", [DENSE] + _pin("1e-3", "true")),
    ("mot_qk_lr1e-3", "full MoT, QK-norm, lr 1e-3", _pin("1e-3", "true")),
]
EVERY_SEED = ["dense", "mot"]
GRID_COMMON = ["train.eval_interval=50", "train.eval_iters=4", "logging.interval=10",
               "logging.diagnostics=true", "logging.tensorboard=false", "checkpoint.interval=100"]
PAIRS = ["image-text", "image-image", "text-image", "speech-text", "text-text"]


def wait_for_load(max_load: float) -> None:
    waited = 0
    while os.getloadavg()[0] > max_load and waited < 1800:
        if waited % 300 == 0:
            print(f"load {os.getloadavg()[0]:.1f} > {max_load}: waiting before the next run", flush=True)
        time.sleep(30)
        waited += 30


def launch(run_dir, config, overrides, nproc, dry, max_load):
    """Train one run with torchrun (a list of arguments: nothing passes through a shell)."""
    if os.path.isfile(os.path.join(run_dir, "COMPLETED")):
        print(f"kept   {run_dir} (finished)", flush=True)
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "launch/pretrain.py", "--config", config] + list(overrides) + [f"run.output_dir={run_dir}"]
    print("run    " + " ".join(cmd[1:]), flush=True)
    if dry:
        return
    wait_for_load(max_load)
    os.makedirs(run_dir, exist_ok=True)
    t0 = time.time()
    with open(run_dir + ".log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"error: {run_dir} failed (exit {done.returncode}); its output: {run_dir}.log")
    print(f"done   {run_dir} in {time.time() - t0:.0f} s", flush=True)


def corpus_overrides(args) -> list:
    """A controlled variant of the demo world (data/demo_corpus.py), built once under <out>/corpus/."""
    if args.corpus not in ("textured", "vague"):
        return []
    prefix = os.path.join(args.out, "corpus", args.corpus)
    if not os.path.isfile(prefix + ".mot.json") and not args.dry_run and not args.report:
        from mot_parallel.corpus_building.demo_corpus import write_demo_corpus
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        write_demo_corpus(prefix, 4000, seed=0, variant=args.corpus)  # the demo's data.demo_documents
    return [f"data.path={prefix}"]


def grid(args):
    rows = [r for r in GRID if not args.rows or r[0] in args.rows.split(",")]
    data = corpus_overrides(args)
    name = f"grid_{args.corpus}" + (f"_{args.steps}" if args.steps != 200 else "")
    base = os.path.join(args.out, name)
    every_seed = set(args.every_seed.split(","))
    table = []
    for key, label, overrides in rows:
        dirs = []
        for seed in args.seeds if key in every_seed else args.seeds[:1]:
            run_dir = os.path.join(base, f"{key}_s{seed}")
            if not args.report:
                launch(run_dir, CORPUS_CONFIG[args.corpus], GRID_COMMON + data + overrides + [f"train.steps={args.steps}", f"train.seed={seed}"],
                       args.nproc, args.dry_run, args.max_load)
            dirs.append(run_dir)
        table.append((label, dirs))
    if args.dry_run:
        return
    seeds = " / ".join(f"seed {s}" for s in args.seeds) + " where two were run"
    text = (f"# grid on the {args.corpus} corpus ({CORPUS_CONFIG[args.corpus]}, {args.steps} steps; cells: {seeds})\n\n"
            f"Final validation loss:\n\n{report.grid_table(table, MODALITIES, 'valid')}\n"
            f"Training loss, mean of the last 4 logged steps:\n\n{report.grid_table(table, MODALITIES, 'train')}\n"
            f"Max attention logit (query-key modality), last logged step (peak over the run):\n\n"
            f"{report.logit_table(table, PAIRS)}")
    path = os.path.join(args.out, f"{name}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text + f"\nwritten: {path}")


def study(args):
    seeds = {}
    for seed in args.seeds:
        seeds[seed] = {}
        for label, config in STUDY:
            run_dir = os.path.join(args.out, "study", f"{label}_s{seed}")
            if not args.report:
                launch(run_dir, config, [f"train.seed={seed}"], args.nproc, args.dry_run, args.max_load)
            seeds[seed][label] = run_dir
    if args.dry_run:
        return
    from mot_parallel.studies.analysis import load_run
    from mot_parallel.studies.analysis.loss_plot import plot_comparison
    got = report.study_fractions(seeds)
    for seed, result in got["per_seed"].items():
        plot_comparison([load_run(seeds[seed][r["label"]]) for r in result["runs"]], result,
                        os.path.join(args.out, f"study_seed{seed}.png"))
    blocks = MODALITIES + ["overall"]
    text = "".join(f"Fraction of dense's {axis} at which each run first reaches dense's final validation loss "
                   f"(mean (min-max) over seeds {', '.join(map(str, args.seeds))}):\n\n"
                   f"{report.fraction_table(got['fractions'], ['mot', 'ffn'], blocks, axis)}\n"
                   for axis in ("step", "flops", "time_s"))
    table = [(label, [seeds[s][label] for s in args.seeds]) for label, _ in STUDY]
    text += f"Final validation loss ({' / '.join(f'seed {s}' for s in args.seeds)}):\n\n"
    text += report.grid_table(table, MODALITIES, "valid")
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump({str(k): v for k, v in got["per_seed"].items()}, f, indent=1)
    print(text + f"\nwritten: {args.out}/study.md, study.json, study_seed*.png")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=["study", "grid"])
    ap.add_argument("--corpus", choices=sorted(CORPUS_CONFIG), default="real", help="grid: which corpus")
    ap.add_argument("--rows", help="grid: comma-separated row keys (default all): " + ",".join(r[0] for r in GRID))
    ap.add_argument("--seeds", type=seed, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int_in(1, 10 ** 6), default=200, help="grid: training steps per run (other than 200: "
                    "into <out>/grid_<corpus>_<steps>)")
    ap.add_argument("--every-seed", default=",".join(EVERY_SEED),
                    help="grid: the rows trained on every seed (the others on the first seed only)")
    ap.add_argument("--out", default="runs/fidelity")
    ap.add_argument("--nproc", type=int_in(1, 256), default=2, help="processes per run (torchrun)")
    ap.add_argument("--max-load", type=positive_float, default=4.0,
                    help="wait while the 1-min load average is above this")
    ap.add_argument("--report", action="store_true", help="only rebuild the tables from existing runs")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    for flag, value in (("--rows", args.rows), ("--every-seed", args.every_seed)):
        unknown = sorted(set((value or "").split(",")) - {r[0] for r in GRID} - {""})
        if unknown:
            sys.exit(f"error: unknown {flag} {unknown}; known: {','.join(r[0] for r in GRID)}")
    os.chdir(ROOT)
    claim_out(args)
    (study if args.suite == "study" else grid)(args)


def claim_out(args):
    """--out is new, or a study directory this tool started (its mark), which is continued: finished runs kept,
    interrupted ones resumed, tables rewritten. Any other non-empty directory is refused."""
    try:
        check_own_dir("--out", args.out, STUDY_DIR)
    except OutputError as e:
        sys.exit(f"error: {e}")
    if not args.dry_run:
        os.makedirs(args.out, exist_ok=True)
        mark(args.out, STUDY_DIR)


if __name__ == "__main__":
    main()
