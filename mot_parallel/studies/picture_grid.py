"""Picture grids as PNG files (tools/sample.py): samples under their ground truths, and sampling trajectories."""
from __future__ import annotations

from .png_files import save_png


def save_grid(pictures, path, truths=()):
    """A grid of pictures, 8 a row; with `truths`, each row of samples under the row of its ground truths."""
    cols = min(8, len(pictures))
    rows = []
    for i in range(0, len(pictures), cols):
        rows += ([list(truths[i:i + cols])] if truths else []) + [list(pictures[i:i + cols])]
    return _draw(rows, path)


def save_trajectory(trajectory, path, truths=()):
    """--trajectory: the ground truths (with --score), then one row of clean estimates per shown step, labelled t."""
    n = len(trajectory[0][1])
    rows = ([list(truths[:n])] if truths else []) + [pics for _, pics in trajectory]
    return _draw(rows, path, (["truth"] if truths else []) + [f"t={t}" for t, _ in trajectory])


def _draw(rows, path, labels=()):
    """rows of RGB pictures in [0, 1] as one PNG, each row labelled when `labels` are given; returns `path`."""
    import matplotlib   # here, not at the top: only a written picture needs it
    matplotlib.use("Agg")   # files only: no display needed
    import matplotlib.pyplot as plt
    cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.0 + (0.6 if labels else 0), len(rows) * 1.0),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():   # not axis("off"), which would hide the row labels too
            side.set_visible(False)
    for r, row in enumerate(rows):
        for c, rgb in enumerate(row):
            axes[r, c].imshow(rgb, interpolation="nearest")
        if labels:
            axes[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.tight_layout(pad=0.2)
    return save_png(fig, path, "sample.py picture", dpi=80)
