"""Comparing finished runs: reading a run's validation curves (run_curves.py), when a run first reaches the
reference's final validation loss (crossing.py), and the loss-curve figure (loss_plot.py). tools/compare_runs.py
is the command line."""
from .crossing import compare_runs, first_crossing
from .run_curves import RunCurves, RunDataError, load_run

__all__ = ["RunCurves", "RunDataError", "compare_runs", "first_crossing", "load_run"]
