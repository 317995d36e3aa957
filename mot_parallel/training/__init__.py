"""Training on DeepSpeed: the loop (trainer.py) and one optimizer step (steps.py); the DeepSpeed JSON
(ds_config.py), optimizer groups and LR schedule (optim.py), pipeline stages (pipeline.py), random streams
(rng.py), checkpoints (checkpoint.py, checkpoint_files.py, resume.py), metrics (metrics.py), the dry run
(dry_run.py) and the fault-injection test seam (faults.py)."""
from .trainer import Trainer

__all__ = ["Trainer"]
