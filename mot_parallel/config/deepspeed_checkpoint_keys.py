"""`deepspeed.checkpoint.*` (and `deepspeed.datastates_ckpt`): what DeepSpeed 0.19 does with each key, and
which ones a run may set. The checkpoint manager (training/checkpoint.py) relies on DeepSpeed writing
every file synchronously, through its torch checkpoint engine, into the staging directory, in torch's zip
format (so the pickle scan can read it before DeepSpeed unpickles it); and on DeepSpeed loading only the
files of our own layout, named by the manifest. A key that breaks one of those is refused here, before
any process group, with the reason; a key DeepSpeed does not know is refused too (DeepSpeed ignores it
silently, so a typo would quietly change nothing).

  tag_validation        Ignore | Warn | Fail: whether ranks compare the tag at save (ours always agree). Allowed.
  parallel_write        {pipeline_stage: bool}: pipeline layer files written by all DP ranks of a stage
                        instead of DP rank 0. Every file still lands in the staging directory before the
                        save returns. Allowed.
  checkpoint_serialization  true (the default: torch's zip format) allowed; false writes the legacy format,
                        which the pickle scan cannot read without unpickling it: refused.
  load_universal        true makes load_checkpoint read DeepSpeed's own universal layout (zero/<param>/*.pt,
                        `latest_universal`) with torch.load(weights_only=False) on files this run never
                        writes: refused (a checkpoint of another layout goes through
                        tools/convert_checkpoint.py and checkpoint.resume=<universal checkpoint>).
  use_node_local_storage  true names files by local rank, for a directory per node: the manifest and the
                        atomic rename need one directory every rank sees. Refused.
  writer                DeepSpeed's fast / decoupled writers (type fast|python|mock, decoupled, io_buffer_*,
                        data_parallel): the decoupled one finishes writing after save_checkpoint returns
                        (the manifest would describe unfinished files), mock writes nothing. Refused.
  datastates_ckpt       (top level) an asynchronous checkpoint engine: refused for the same reason.
"""
from __future__ import annotations

from typing import Any, List

from .schema import Config

TAG_VALIDATION = ("ignore", "warn", "fail")
REFUSED = {
    "load_universal": (True, "DeepSpeed's universal loader reads another directory layout with "
                       "torch.load(weights_only=False); for another layout convert with tools/convert_checkpoint.py "
                       "to-universal and set checkpoint.resume=<that directory>"),
    "use_node_local_storage": (True, "checkpoints need one directory every rank sees (the manifest and the atomic "
                               "publish); point checkpoint.dir at a shared filesystem"),
    "checkpoint_serialization": (False, "the legacy (non-zip) format cannot be scanned for non-data objects before "
                                 "DeepSpeed unpickles it; leave it true"),
}


def deepspeed_checkpoint_errors(cfg: Config) -> List[str]:
    """Problems with `deepspeed.checkpoint` and `deepspeed.datastates_ckpt`, one line per key."""
    extra = cfg.deepspeed or {}
    err = []
    if extra.get("datastates_ckpt") is not None:
        err.append("deepspeed.datastates_ckpt: an asynchronous checkpoint engine would publish checkpoints before "
                   "their files are written; remove it")
    section = extra.get("checkpoint")
    if section is None:
        return err
    if not isinstance(section, dict):
        return err + [f"deepspeed.checkpoint must be a mapping, got {section!r}"]
    for key, value in section.items():
        err += _key_errors(f"deepspeed.checkpoint.{key}", key, value)
    return err


def _key_errors(name: str, key: str, value: Any) -> List[str]:
    if key == "tag_validation":
        ok = isinstance(value, str) and value.lower() in TAG_VALIDATION
        return [] if ok else [f"{name}={value!r}: one of Ignore, Warn, Fail"]
    if key == "parallel_write":
        if not isinstance(value, dict) or set(value) - {"pipeline_stage"} or \
                not isinstance(value.get("pipeline_stage", False), bool):
            return [f"{name}={value!r}: only {{pipeline_stage: true|false}}"]
        return []
    if key in REFUSED:
        bad, why = REFUSED[key]
        if not isinstance(value, bool):
            return [f"{name}={value!r}: true or false"]
        return [f"{name}={value} is not supported: {why}"] if value == bad else []
    if key == "writer":
        return [] if value is None else [f"{name}: DeepSpeed's fast and decoupled writers may finish after the save "
                                          "returns (or, as 'mock', write nothing), so a checkpoint could be "
                                          "published unfinished; remove it (the torch writer is used)"]
    return [f"{name}: not a DeepSpeed checkpoint key (DeepSpeed would ignore it); known: tag_validation, "
            "parallel_write, checkpoint_serialization, load_universal, use_node_local_storage, writer"]
