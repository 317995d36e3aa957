"""Which checkpoint a run starts from (`checkpoint.resume`), decided before any process group exists.

    auto        the newest complete checkpoint in the run's checkpoint.dir, or a fresh start when there is
                none; `latest` is a hint only, so a missing or garbled pointer never restarts a run
    none        a fresh start; refused when checkpoint.dir already holds checkpoints (they would be
                overwritten): use a new run directory, or delete them
    <dir>       a DeepSpeed checkpoint directory (or one step_* inside it) of this layout
    <universal> a universal checkpoint (another layout, an upcycled model): starts the run unless the run
                has checkpoints of its own, which then win (a requeued job must not start over)
A checkpoint of another layout (DP, TP, PP or ZeRO stage) is resharded into this run's layout as it is
loaded when checkpoint.reshard_on_resume=auto (reshard.py), and refused, naming the conversion command,
when it is `refuse`. A newest checkpoint that is not complete stops the run with what is wrong, unless
checkpoint.on_corrupt=previous asks to fall back to the previous complete one. Resuming is refused when
the run would later overwrite a checkpoint it did not load (a newer one in the same directory), and when
the checkpoint, DeepSpeed's or universal, was written for another model (model_record.py: every
architecture setting is compared, and each difference named by its config key).
A checkpoint with a format-1 manifest (earlier releases: sizes only) is resumed with a warning: its
contents cannot be checked against hashes nor its model settings compared. Refusing it would strand every
run in flight at the upgrade, and nothing could restore the missing records but the user's word; its
files are still checked for completeness, symbolic links, strangers and non-data objects, DeepSpeed's
strict load still refuses another shape, and the run's next save writes the full record.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ..config import Config
from ..config.parallel_layout import ParallelLayout
from .checkpoint import note
from .checkpoint_files import (FORMAT_1, CheckpointError, layout_problem, problems, read_manifest,
                               step_dirs, step_of)
from .model_record import model_problem, model_record
from .run_dir import checkpoint_dir


@dataclass(frozen=True)
class ResumeTarget:
    universal: bool
    directory: str             # the universal checkpoint, or the directory holding the step_* tag
    tag: Optional[str] = None  # step_XXXXXXXX (DeepSpeed checkpoints)
    reshard_from: Optional[dict] = None  # the checkpoint's layout record, when it is not this run's

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.tag) if self.tag else self.directory

    @property
    def step(self) -> int:
        return step_of(self.tag) if self.tag else 0


def resolve_resume(cfg: Config, layout: ParallelLayout) -> Optional[ResumeTarget]:
    from ..convert.universal import is_universal
    own_dir, resume = checkpoint_dir(cfg), cfg.checkpoint.resume
    own = step_dirs(own_dir)
    if resume == "none":
        if own:
            raise CheckpointError(f"checkpoint.resume=none, but {own_dir} already holds {_tags(own)}: a fresh run "
                                  "would overwrite them. Use a new run.output_dir (or checkpoint.dir), delete them, "
                                  "or resume them with checkpoint.resume=auto")
        return None
    if resume == "auto" or (is_universal(resume) and own):
        return _validated(cfg, own_dir, _newest_complete(own_dir, own, cfg.checkpoint.on_corrupt), layout) \
            if own else None
    if is_universal(resume):
        return _universal(cfg, os.path.abspath(resume))
    directory, tag = _explicit(os.path.abspath(resume), cfg.checkpoint.on_corrupt)
    if own and os.path.abspath(directory) != os.path.abspath(own_dir):
        raise CheckpointError(f"checkpoint.resume={resume} is another run's checkpoint, but {own_dir} already holds "
                              f"{_tags(own)}: saving here would mix two runs. Use a new run.output_dir")
    target = _validated(cfg, directory, tag, layout)
    newer = [t for s, t in own if s > target.step]
    if newer:
        raise CheckpointError(f"resuming {tag} would later overwrite the newer checkpoints {newer} in {own_dir}, "
                              "which this run did not load: resume in a new run.output_dir (checkpoint.resume="
                              f"{os.path.join(directory, tag)}), or move the newer ones away")
    return target


def _explicit(path: str, on_corrupt: str) -> Tuple[str, str]:
    if os.path.isdir(path) and step_of(os.path.basename(path)) is not None:
        bad = problems(path)
        if bad:
            raise CheckpointError(f"checkpoint.resume={path} is not a complete checkpoint:\n  - " + "\n  - ".join(bad))
        return os.path.dirname(path), os.path.basename(path)
    steps = step_dirs(path)
    if not steps:
        raise CheckpointError(f"checkpoint.resume={path}: no checkpoint there (expected a directory with step_* "
                              "checkpoints, one step_* directory, or a universal checkpoint)")
    return path, _newest_complete(path, steps, on_corrupt)


def _newest_complete(directory: str, steps: List[Tuple[int, str]], on_corrupt: str) -> str:
    newest = steps[-1][1]
    latest = _read_latest(directory)
    if latest != newest:
        note(f"{directory}/latest says {latest!r}; the newest checkpoint is {newest} (latest is only a hint)")
    for _, tag in reversed(steps):
        bad = problems(os.path.join(directory, tag))
        if not bad:
            return tag
        if on_corrupt != "previous":
            raise CheckpointError(f"the newest checkpoint {os.path.join(directory, tag)} is not complete:\n  - "
                                  + "\n  - ".join(bad) + "\nResume an older one (checkpoint.resume=<its directory>) "
                                  "or set checkpoint.on_corrupt=previous to fall back to the previous complete one")
        note(f"skipping incomplete checkpoint {tag} (checkpoint.on_corrupt=previous): {bad[0]}")
    raise CheckpointError(f"{directory}: no complete checkpoint among {_tags(steps)}")


def _validated(cfg: Config, directory: str, tag: str, layout: ParallelLayout) -> ResumeTarget:
    path = os.path.join(directory, tag)
    meta = read_manifest(path)
    problem = layout_problem(path, layout)
    if meta.get("format") == FORMAT_1:
        note(f"warning: {path} has a format-1 manifest (an earlier release): its files' contents cannot be checked "
             "against hashes, nor its model settings compared with this run's; resuming it as it is")
    else:  # (a reshard goes through the universal form, which re-pads the vocabulary rows)
        model = model_problem(path, meta.get("model") or {}, cfg, deepspeed=not problem)
        if model:
            raise CheckpointError(model)
    if not problem:
        return ResumeTarget(False, directory, tag)
    if cfg.checkpoint.reshard_on_resume != "auto":
        raise CheckpointError(problem + "; or let the run reshard it as it resumes: checkpoint.reshard_on_resume=auto")
    from ..convert.deepspeed_files import unsupported
    why = unsupported(path, meta["layout"])
    if why:
        raise CheckpointError(f"{problem}. checkpoint.reshard_on_resume=auto cannot reshard it: {why}")
    return ResumeTarget(False, directory, tag, reshard_from=meta["layout"])


def _universal(cfg: Config, path: str) -> ResumeTarget:
    from ..convert.universal import Universal
    try:  # its shards are safetensors (data only), read only from inside it (Universal's closed file set)
        uni = Universal(path)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint.resume={path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable universal checkpoint is named, not loaded
        raise CheckpointError(f"checkpoint.resume={path}: not a readable universal checkpoint ({type(e).__name__}: "
                              f"{e})") from None
    problem = model_problem(path, model_record(uni.config), cfg, deepspeed=False)
    if problem:
        raise CheckpointError(problem)
    return ResumeTarget(True, path)


def _read_latest(directory: str) -> Optional[str]:
    try:
        with open(os.path.join(directory, "latest")) as f:
            return f.read(64).strip()
    except (OSError, UnicodeDecodeError):
        return None


def _tags(steps: List[Tuple[int, str]]) -> str:
    tags = [t for _, t in steps]
    return ", ".join(tags[-3:]) + (f" (and {len(tags) - 3} older)" if len(tags) > 3 else "")
