"""Validation-loss curves of compared runs: one row of panels per modality (+ overall), loss against steps (left)
and against training FLOPs (right), every run on each panel, the reference's final loss as a dashed horizontal
line and each run's crossing of it as a cross."""
from __future__ import annotations

from typing import Dict, Sequence

from ..png_files import save_png
from .crossing import curve
from .run_curves import RunCurves


def plot_comparison(runs: Sequence[RunCurves], comparison: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")   # files only: no display on cluster nodes or in tests
    import matplotlib.pyplot as plt

    blocks = comparison["blocks"]
    fig, axes = plt.subplots(len(blocks), 2, figsize=(12, 3.4 * len(blocks)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (ax_step, ax_flops), block in zip(axes, blocks):
        for i, run in enumerate(runs):
            points = curve(run, block["metric"])
            label = comparison["runs"][i]["label"]
            color = colors[i % len(colors)]
            for ax, axis in ((ax_step, "step"), (ax_flops, "flops")):
                xs = [ev.step if axis == "step" else ev.flops for ev, _ in points]
                ax.plot(xs, [loss for _, loss in points], marker=".", color=color, label=label)
        target = block["target"]
        for ax, axis, xlabel in ((ax_step, "step", "step"), (ax_flops, "flops", "training FLOPs")):
            if target is not None:
                ax.axhline(target["loss"], color="gray", linestyle="--", linewidth=1,
                           label=f"target {target['loss']:.4f}")
                for i, r in enumerate(block["rows"]):
                    if r["reached"]:
                        ax.plot(r["position"][axis], target["loss"], "x", color=colors[i % len(colors)], ms=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{block['name']} validation loss")
            ax.grid(alpha=0.3)
        ax_step.set_title(f"{block['name']}: validation loss vs step")
        ax_flops.set_title(f"{block['name']}: validation loss vs training FLOPs")
        ax_step.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, "loss curves", dpi=100)  # marked: the mark --overwrite recognises
    plt.close(fig)
