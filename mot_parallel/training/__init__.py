"""Training on DeepSpeed: the DeepSpeed JSON (ds_config.py), optimizer groups and LR schedule (optim.py),
pipeline stages (pipeline.py), atomic checkpoints (checkpoint.py), metrics (metrics.py), the loop
(trainer.py) and test-only fault injection (faults.py)."""
from .trainer import Trainer

__all__ = ["Trainer"]
