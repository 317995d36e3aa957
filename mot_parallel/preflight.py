"""Preflight: the start-up checks that need files, run after `validate()` and before any process group.

launch/pretrain.py runs `preflight(cfg, layout, rank)` right after validation (`--check` stops there), so a
run that cannot work fails in seconds with every problem listed, naming the file or key and the fix,
instead of as a traceback after the process group exists:

  * data (data/from_config.py `check_data`): data.path is a corpus prefix (not one of its files, not a
    missing path), its index is sound, its sidecar's modalities and vocabulary fit the model, the corpus
    has something to learn, and every token id is below model.vocab_size. The id scan runs once per
    corpus and is cached next to it (data/token_ids.py); rank 0 scans, the other ranks check metadata only,
    so ranks do not read the same files at once (the Trainer's rank 0 opens the corpus before the others,
    which then hit the cache);
  * checkpoints (training/resume.py): checkpoint.resume names a usable checkpoint of this layout and
    model, the newest checkpoint of the run is complete, nothing newer would be overwritten;
  * the run directory (training/run_dir.py): rank 0 takes the run's lock for the time of the check (no
    other run is using the directory), removes the run's own unpublished staging leftovers, and checks
    checkpoint.dir is writable (naming ENOSPC).
"""
from __future__ import annotations

from .config import Config, ConfigError, ParallelLayout
from .data.from_config import check_data
from .data.indexed import DataError


def preflight(cfg: Config, layout: ParallelLayout, rank: int = 0) -> None:
    """Raise ConfigError listing every problem found; `rank` is the launched rank (0 scans the corpus)."""
    from .training.checkpoint_files import CheckpointError
    from .training.resume import resolve_resume
    from .training.run_dir import claim_run_dir
    problems = []
    try:
        check_data(cfg, full=rank == 0)
    except DataError as e:
        problems.append(str(e))
    try:
        resolve_resume(cfg, layout)
        claim_run_dir(cfg, rank, hold=False)
    except CheckpointError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("cannot start:\n  - " + "\n  - ".join(problems))
