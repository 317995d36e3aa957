"""When does each run first reach the reference run's final validation loss? (per modality and overall)

    python tools/compare_runs.py runs/dense runs/mot runs/mot_ffn [--labels dense,mot,ffn] [--json] [--plot out.png]

The first RUN_DIR is the reference (usually dense). For each modality and overall, the target is the reference's
final validation loss; every run (the reference too) is placed at the step, tokens, training FLOPs and wall-clock
where its validation loss first reaches the target, by linear interpolation between the two evaluations that
bracket the crossing, and as a fraction of the reference's final step / tokens / FLOPs / wall-clock ("mot reaches
dense's final image validation loss at 0.47 of dense's FLOPs"). FLOPs are model training FLOPs, dense-equivalent
(an MoT has the dense model's FLOPs per token). A run that never gets there is "not reached", with its best loss.

Each RUN_DIR is a run's output_dir: metrics.jsonl (with "kind": "valid" records; train.eval_interval, and the
trainer always evaluates at the end) and config.yaml. Older runs without tokens_total/flops_total get them derived
from the config (the report says so); their wall-clock is n/a.

Seeds: the tool compares one reference with runs of ONE seed each; run it once per seed pair
(runs/dense_s1 runs/mot_s1, then runs/dense_s2 runs/mot_s2) and quote the spread of the fractions.

--json prints the whole comparison (blocks -> rows -> position, fraction, bracket, best); --plot writes the loss
curves against steps and FLOPs, one row of panels per modality (+ overall), the target as a dashed line.
Problems with the inputs are one `error:` line and exit status 1.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mot_parallel.studies.analysis import RunDataError, compare_runs, load_run  # noqa: E402
from mot_parallel.cli import add_overwrite  # noqa: E402
from mot_parallel.studies.png_files import check_png  # noqa: E402
from mot_parallel.outputs import OutputError  # noqa: E402

AXIS_NAMES = {"step": "steps", "tokens": "tokens", "flops": "FLOPs", "time_s": "wall-clock"}


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds < 3600:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_position(p):
    return [f"{p['step']:.1f}", f"{p['tokens']:.3e}", f"{p['flops']:.3e}", fmt_time(p["time_s"])]


def fmt_fraction(f):
    return ["n/a" if f[k] is None else f"{f[k]:.3f}" for k in ("step", "tokens", "flops", "time_s")]


def sentence(r, name):
    f = r["fraction"]
    rest = ", ".join(f"{AXIS_NAMES[k]} {f[k]:.3g}" for k in ("step", "tokens", "time_s") if f[k] is not None)
    where = ("at its first evaluation: an upper bound" if r["at_first_evaluation"] else
             f"interpolated between steps {r['bracket']['from']['step']} and {r['bracket']['to']['step']}")
    return (f"{r['label']} reaches the reference's final {name} validation loss at {f['flops']:.3g} of the "
            f"reference's FLOPs ({rest}; {where})")


def print_block(block, reference):
    name, t = block["name"], block["target"]
    print(f"\n== {name} validation loss ({block['metric']}) ==")
    if t is None:
        print(f"the reference {reference} has no {name} validation loss at any evaluation: nothing to compare")
        return
    final = "final" if t["final_evaluation"] else "last available (its final evaluation had no loss for it)"
    print(f"target: {reference}'s {final} loss {t['loss']:.4f} at step {t['step']:.0f} | tokens {t['tokens']:.3e} | "
          f"FLOPs {t['flops']:.3e} | wall-clock {fmt_time(t['time_s'])}")
    width = max(len(r["label"]) for r in block["rows"])
    print(f"{'run':{width}}  {'step':>9} {'tokens':>10} {'FLOPs':>10} {'time':>9} | fraction of reference: "
          f"{'step':>6} {'tokens':>6} {'FLOPs':>6} {'time':>6}")
    for r in block["rows"]:
        if r["reached"]:
            pos, fr = fmt_position(r["position"]), fmt_fraction(r["fraction"])
            print(f"{r['label']:{width}}  {pos[0]:>9} {pos[1]:>10} {pos[2]:>10} {pos[3]:>9} | "
                  f"{'':23}{fr[0]:>6} {fr[1]:>6} {fr[2]:>6} {fr[3]:>6}")
        elif r["best"] is None:
            print(f"{r['label']:{width}}  not reached: no {name} validation loss at any evaluation")
        else:
            b = r["best"]
            print(f"{r['label']:{width}}  not reached: best {b['loss']:.4f} at step {b['step']:.0f} "
                  f"(FLOPs {b['flops']:.3e})")
    for r in block["rows"][1:]:
        if r["reached"]:
            print(sentence(r, name))


def print_table(result):
    reference = result["reference"]["label"]
    print(f"reference: {reference} ({result['reference']['run_dir']})")
    print(f"crossings: {result['interpolation']}")
    for block in result["blocks"]:
        print_block(block, reference)
    notes = [(r["label"], n) for r in result["runs"] for n in r["notes"]]
    if notes:
        print("\nnotes:")
        for label, note in notes:
            print(f"  {label}: {note}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="the reference first, then the runs to compare")
    ap.add_argument("--labels", help="comma-separated labels, one per RUN_DIR (default: dir name + untie setting)")
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    ap.add_argument("--plot", metavar="OUT.png", help="write the validation-loss curves (PNG)")
    add_overwrite(ap)
    args = ap.parse_args(argv)
    try:
        if args.plot:  # a new file (or an earlier plot of ours, with --overwrite), outside every run dir
            check_png("--plot", args.plot, [("RUN_DIR", d) for d in args.run_dirs], args.overwrite)
        runs = [load_run(d) for d in args.run_dirs]
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
        result = compare_runs(runs, labels)
    except (RunDataError, OutputError, OSError) as e:
        sys.exit(f"error: {e}")
    if args.plot:
        from mot_parallel.studies.analysis.loss_plot import plot_comparison
        plot_comparison(runs, result, args.plot)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_table(result)
        if args.plot:
            print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
