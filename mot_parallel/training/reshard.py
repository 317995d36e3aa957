"""Resuming a checkpoint of another layout (checkpoint.reshard_on_resume=auto): a job requeued onto fewer or
more nodes, a changed TP, PP or ZeRO stage.

    <step dir, layout A> --every rank of this run converts its share of the parameters, in parallel--> 
    <checkpoint.dir>/.reshard/<tag>   a universal checkpoint (convert/universal.py), the format of
                                      tools/convert_checkpoint.py to-universal
    --import_engine: each rank loads its own slices into this run's engine (layout B)--> training goes on

The conversion reads the DeepSpeed files directly (convert/deepspeed_files.py), so it needs no engine of
layout A and no world of A's size. Parameters are dealt out to the ranks in contiguous runs of about equal
size (pipeline stage by stage), and a rank holds one full parameter with its two Adam states at a time, plus
the shard it is writing (at most universal.SHARD_BYTES): no rank ever holds the whole model. Loading then
reads one full parameter at a time, as any universal resume does. The state is the one the explicit tool
writes (fp32 master weights, Adam moments, step, LR schedule, loader position; per-rank RNG streams are not
carried, as with any universal checkpoint), so the losses that follow equal those of a run resumed from the
tool's universal checkpoint, bit for bit. The universal copy is deleted once every rank has loaded it; the
source checkpoint is only read. Rank 0 prints the time and the peak memory (over the ranks) it took.
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Tuple

import torch
import torch.distributed as dist

from ..convert.deepspeed_files import DeepSpeedShards
from ..convert.canonical_names import canonical_names
from ..convert.universal import ShardWriter, fresh_temp_dir, publish, temp_dir
from ..distributed.startup import barrier_if_distributed
from ..tensor_parallel.param_meta import declared_partition
from ..distributed.host_memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from .checkpoint import agree, note
from .checkpoint_files import CheckpointError, layout_record
from .run_dir import checkpoint_dir

RESHARD_DIR = ".reshard"


def shares(sizes: List[int], world: int) -> List[range]:
    """Contiguous runs of indices, one per rank, of about equal total size (greedy on the running sum)."""
    total, out, start, acc = max(1, sum(sizes)), [], 0, 0
    for r in range(world):
        end = start
        while end < len(sizes) and (r == world - 1 or acc + sizes[end] / 2 <= total * (r + 1) / world):
            acc += sizes[end]
            end += 1
        out.append(range(start, end))
        start = end
    return out


def _partitions(engine, topo, num_layers: int) -> Dict[str, Tuple[int, tuple]]:
    """canonical name -> declared TP partition, of every parameter of the model (stages hold parts of it)."""
    names = canonical_names(engine.module, topo.pp_size > 1, num_layers)
    mine = {names[n]: declared_partition(p) for n, p in engine.module.named_parameters()}
    if not dist.is_initialized():
        return mine
    everyone: List[Dict] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {k: v for d in everyone for k, v in d.items()}


def convert(step_dir: str, rec: Dict[str, int], out: str, cfg, settings, engine, topo) -> None:
    """Write the checkpoint at `step_dir` (layout `rec`) as the universal checkpoint `out` (collective)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    tmp = fresh_temp_dir(out) if rank == 0 else temp_dir(out)
    partitions = _partitions(engine, topo, settings.num_layers)
    barrier_if_distributed()
    failure, complete = None, True
    try:
        files = DeepSpeedShards(step_dir, rec, settings.num_layers)
        params = files.params()
        model, optim = ShardWriter(tmp, f"model-r{rank:05d}"), ShardWriter(tmp, f"optim-r{rank:05d}")
        for i in shares([n for _, _, n in params], world)[rank]:
            name, stage, _ = params[i]
            if name not in partitions:
                raise CheckpointError(f"{step_dir}: parameter {name} is not in this run's model")
            full = files.full(name, stage, partitions[name])
            model.add(name, full["fp32"])
            complete &= all(k in full for k in ("exp_avg", "exp_avg_sq"))
            for key in ("exp_avg", "exp_avg_sq"):
                if key in full:
                    optim.add(f"{name}/{key}", full[key])
            del full
        model.flush()
        optim.flush()
        missing = set(partitions) - {n for n, _, _ in params}
        if missing:
            raise CheckpointError(f"{step_dir}: holds no {sorted(missing)[:3]} of this run's model")
    except CheckpointError as e:
        failure = e
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        failure = CheckpointError(f"resharding {step_dir} failed on rank {rank}: {type(e).__name__}: {e}")
    agree(failure, f"resharding {step_dir}")
    flag = torch.tensor([1.0 if complete else 0.0], device=engine.device)  # (NCCL reduces device tensors)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if rank == 0:
        client = files.client_state()
        state = {"step": int(client["train"]["step"]), "train": client["train"],
                 "scheduler": client["lr_scheduler"], "loader": client["loader"]}
        publish(out, cfg, {"step": state["step"], "has_optimizer": bool(flag.item()),
                           "vocab_rows": settings.padded_vocab(rec["tp"]), "vocab_size": settings.vocab_size,
                           "resharded_from": rec}, state)
    barrier_if_distributed()


def load_universal(trainer, path: str) -> None:
    """Load the universal checkpoint `path` into the trainer's engine (any layout) and its stateful parts."""
    from ..convert import import_engine
    state = import_engine(path, trainer.engine, trainer.topo, trainer.settings)
    trainer.state.load_state_dict(state.get("train", {"step": state.get("step", 0)}))
    for part, key in ((trainer.scheduler, "scheduler"), (trainer.loader, "loader")):
        if key in state:
            part.load_state_dict(state[key])


def _layout_text(rec: Dict[str, int]) -> str:
    return f"TP{rec['tp']} PP{rec['pp']} DP{rec['dp']} ZeRO-{rec['zero_stage']}"


@contextmanager
def resharded(target, trainer) -> Iterator[str]:
    """The checkpoint `target` (a ResumeTarget with reshard_from) as a universal checkpoint, for the trainer
    to load inside the block; afterwards it is deleted and rank 0 reports time and memory."""
    t, step_dir = trainer, target.path
    parent = os.path.join(checkpoint_dir(t.cfg), RESHARD_DIR)
    if os.path.islink(parent) or (os.path.exists(parent) and not os.path.isdir(parent)):
        raise CheckpointError(f"{parent} is not a directory this run created (a symbolic link or a file): "
                              "resharding writes there, so remove it")
    out = os.path.join(parent, target.tag)
    rank = dist.get_rank() if dist.is_initialized() else 0
    reset_peak_rss()
    base, t0 = rss_bytes(), time.perf_counter()
    convert(step_dir, target.reshard_from, out, t.cfg, t.settings, t.engine, t.topo)
    t1 = time.perf_counter()
    yield out
    barrier_if_distributed()
    stats = torch.tensor([t1 - t0, time.perf_counter() - t1, float(peak_rss_bytes() - base)], dtype=torch.float64,
                         device=t.device)
    if dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    if rank == 0:
        shutil.rmtree(parent, ignore_errors=True)
        note(f"resharded {step_dir} from {_layout_text(target.reshard_from)} to "
             f"{_layout_text(layout_record(t.layout))}: converted in {stats[0]:.2f} s, loaded in {stats[1]:.2f} s, "
             f"peak memory +{stats[2] / 2**20:.1f} MiB per rank (the most over the ranks)")
    barrier_if_distributed()
