"""Capacity planning: hardware assumptions, exact parameter counts per rank, the memory model (checked
against measured memory), communication and step-time estimates, and the layout search."""
from .estimate import Estimate, estimate
from .hardware import GPUS, Hardware
from .memory import GB, Memory, memory
from .params import model_params, rank_params, stage_layers
from .search import Plan, evaluate, search

__all__ = ["GB", "GPUS", "Estimate", "Hardware", "Memory", "Plan", "estimate", "evaluate", "memory",
           "model_params", "rank_params", "search", "stage_layers"]
