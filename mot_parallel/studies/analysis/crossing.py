"""When does a run first reach the reference run's final validation loss? (the MoT paper's headline metric:
"MoT matches dense's final validation loss at 55.8% of the FLOPs", per modality and overall).

The target of a metric is the reference's loss at its last evaluation that has one (its final evaluation unless the
held-out set had no token of that modality there). A run reaches it at the first evaluation whose loss is <= the
target; the crossing is placed by LINEAR INTERPOLATION between that evaluation and the previous one that has a loss
for the metric (evaluations without one are skipped): w = (L_prev - target) / (L_prev - L_cross), and step, tokens,
FLOPs and wall-clock are each interpolated with the same w (within a run they grow linearly with the step). A run
already below the target at its first evaluation has no bracket: it is reported at that evaluation (an upper
bound). Fractions divide the crossing by the reference's position at the target's evaluation.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .run_curves import Evaluation, RunCurves, RunDataError, loss_key

AXES = ("step", "tokens", "flops", "time_s")
INTERPOLATION = ("linear interpolation between the two evaluations that bracket the crossing (step, tokens, "
                 "FLOPs and wall-clock interpolated with the same weight); a run already at or below the target at "
                 "its first evaluation is placed there (an upper bound)")

Point = Tuple[Evaluation, float]    # an evaluation and its (finite) loss for one metric


def position(ev: Evaluation) -> Dict[str, Optional[float]]:
    return {"step": float(ev.step), "tokens": ev.tokens, "flops": ev.flops, "time_s": ev.time_s}


def curve(run: RunCurves, key: str) -> List[Point]:
    """The evaluations of `run` that have a loss for metrics key `key`, in step order."""
    return [(ev, ev.losses[key]) for ev in run.evaluations if ev.losses.get(key) is not None]


def interpolate(a: Dict[str, Optional[float]], b: Dict[str, Optional[float]], w: float) -> Dict[str, Optional[float]]:
    return {k: None if a[k] is None or b[k] is None else a[k] + w * (b[k] - a[k]) for k in AXES}


def first_crossing(points: Sequence[Point], target: float) -> Optional[Dict]:
    """Where the piecewise-linear curve through `points` first reaches `target`, or None when it never does."""
    for i, (ev, loss) in enumerate(points):
        if loss > target:
            continue
        if i == 0:
            return {"position": position(ev), "bracket": None, "at_first_evaluation": True}
        prev, prev_loss = points[i - 1]
        w = (prev_loss - target) / (prev_loss - loss)     # prev_loss > target >= loss, so 0 < w <= 1
        return {"position": interpolate(position(prev), position(ev), w), "at_first_evaluation": False,
                "bracket": {"from": {"step": prev.step, "loss": prev_loss}, "to": {"step": ev.step, "loss": loss}}}
    return None


def fractions(pos: Dict[str, Optional[float]], ref: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    return {k: pos[k] / ref[k] if pos[k] is not None and ref[k] else None for k in AXES}


def target_of(reference: RunCurves, key: str) -> Optional[Dict]:
    points = curve(reference, key)
    if not points:
        return None
    ev, loss = points[-1]
    return {"loss": loss, **position(ev), "final_evaluation": ev.step == reference.evaluations[-1].step}


def row(run: RunCurves, label: str, key: str, target: Dict) -> Dict:
    points = curve(run, key)
    out = {"label": label, "run_dir": run.run_dir, "evaluations": len(points), "reached": False,
           "position": None, "fraction": None, "bracket": None, "at_first_evaluation": False, "best": None}
    if points:
        ev, loss = min(points, key=lambda p: (p[1], p[0].step))
        out["best"] = {"loss": loss, **position(ev)}
    hit = first_crossing(points, target["loss"])
    if hit is not None:
        out.update(hit, reached=True, fraction=fractions(hit["position"], target))
    return out


def check_comparable(runs: Sequence[RunCurves]) -> None:
    ref = runs[0]
    for run in runs[1:]:
        if sorted(run.modalities) != sorted(ref.modalities):
            raise RunDataError(f"{run.run_dir} has modalities {run.modalities} but the reference {ref.run_dir} has "
                               f"{ref.modalities}; compare runs trained on the same modalities")


def compare_runs(runs: Sequence[RunCurves], labels: Optional[Sequence[str]] = None) -> Dict:
    """The comparison as a JSON-ready dict: one block per modality and one "overall", a row per run (the
    reference first). `labels` replace the runs' default labels (run dir name + untie setting)."""
    if len(runs) < 2:
        raise RunDataError("give at least two run dirs: the reference (usually dense) first, then the runs to "
                           "compare with it")
    labels = list(labels) if labels is not None else [r.label for r in runs]
    if len(labels) != len(runs):
        raise RunDataError(f"--labels gives {len(labels)} labels for {len(runs)} run dirs; give one label per run dir")
    check_comparable(runs)
    ref = runs[0]
    blocks = []
    for name, modality in [(m, m) for m in ref.modalities] + [("overall", None)]:
        key = loss_key(modality)
        target = target_of(ref, key)
        rows = [] if target is None else [row(r, lab, key, target) for r, lab in zip(runs, labels)]
        blocks.append({"name": name, "metric": key, "target": target, "rows": rows})
    return {"reference": {"label": labels[0], "run_dir": ref.run_dir}, "interpolation": INTERPOLATION,
            "runs": [{"label": lab, "run_dir": r.run_dir, "untie": r.untie, "modalities": r.modalities,
                      "evaluations": len(r.evaluations), "notes": r.notes} for r, lab in zip(runs, labels)],
            "blocks": blocks}
