"""Test utilities shipped with the package (tests and downstream users' own parallel tests use them)."""
from .layouts import layout_id, layouts
from .multiprocess import DistributedTestError, free_port, run_distributed

__all__ = ["DistributedTestError", "free_port", "layout_id", "layouts", "run_distributed"]
