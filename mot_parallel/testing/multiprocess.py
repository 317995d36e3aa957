"""Run a function on N fresh gloo processes and collect each rank's return value or traceback.

    results = run_distributed(body, world_size=4, args=(tp,), timeout=60)

- Fresh processes per call, forked from a *forkserver* that has already imported torch and DeepSpeed
  (more with MOT_TEST_PRELOAD, e.g. megatron.core for the Megatron tests), so a start costs ~0.1 s
  instead of seconds of imports, and no OpenMP/thread state of the pytest process leaks into the children.
- A free TCP port per call; every rank calls `mot_parallel.distributed.init_distributed()` (the real
  start-up code) from RANK/WORLD_SIZE/MASTER_* variables, as torchrun would set them.
- If a rank raises, the others get a short grace period to report, then all are killed and
  `DistributedTestError` carries every rank's traceback. A hang fails at `timeout` instead of blocking CI.
- `body` must be importable (a module-level function); its return value must be picklable.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import time
import traceback
from multiprocessing.connection import wait
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

_PRELOAD = ["torch", "torch.distributed", "mot_parallel.distributed", "mot_parallel.tensor_parallel"]
_context = None


class DistributedTestError(AssertionError):
    """One or more ranks failed or timed out; the message holds their tracebacks."""


def _ctx():
    global _context  # the forkserver is a per-process resource, not model state
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(_PRELOAD + os.environ.get("MOT_TEST_PRELOAD", "deepspeed").split(","))
    return _context


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class _Job:
    """What every rank of one run_distributed call runs, and where it meets its peers."""
    fn: Callable
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    world_size: int
    port: int
    env: Dict[str, str]    # extra environment variables of every rank


def _worker(job: _Job, rank: int, conn) -> None:
    os.environ.update(job.env)
    world = str(job.world_size)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job.port), RANK=str(rank), WORLD_SIZE=world,
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=world)
    try:
        from mot_parallel.corpus_building import register_demo_corpora
        from mot_parallel.distributed import init_distributed
        register_demo_corpora()  # bodies train on data.path: demo as launch/pretrain.py does
        init_distributed(force_cpu=True, require_process_group=True, timeout_s=300)   # and N ranks share the cores
        result = job.fn(*job.args, **job.kwargs)
        # plain pickle: tensors travel by value (torch's reducers would share file descriptors that die
        # with this process while the parent may still be reading them)
        conn.send_bytes(pickle.dumps(("ok", result)))
    except BaseException:  # noqa: BLE001 - report everything, including SystemExit/KeyboardInterrupt
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
        conn.close()
        os._exit(1)  # skip process-group teardown: peers may be stuck in a collective
    conn.close()
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()


def run_distributed(fn: Callable, world_size: int, args: Sequence[Any] = (), kwargs: Optional[Dict] = None,
                    timeout: float = 120.0, grace: float = 3.0, env: Optional[Dict[str, str]] = None) -> List[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` gloo ranks; return the per-rank results in rank order."""
    ctx = _ctx()
    job = _Job(fn, tuple(args), kwargs or {}, world_size, free_port(), env=env or {})
    procs, conns = [], []
    for rank in range(world_size):
        parent, child = ctx.Pipe(duplex=False)
        # not daemonic: bodies may start processes of their own (Megatron's async checkpoint writer does);
        # every worker is joined or killed below
        p = ctx.Process(target=_worker, args=(job, rank, child), daemon=False)
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    results: Dict[int, Any] = {}
    errors: Dict[int, str] = {}
    pending = set(range(world_size))
    deadline, give_up = time.monotonic() + timeout, None
    while pending:
        now = time.monotonic()
        limit = min(deadline, give_up) if give_up else deadline
        if now >= limit:
            break
        ready = wait([conns[r] for r in pending] + [procs[r].sentinel for r in pending], timeout=limit - now)
        for r in list(pending):
            if conns[r] in ready or (procs[r].sentinel in ready and conns[r].poll()):
                try:
                    status, payload = pickle.loads(conns[r].recv_bytes())
                except EOFError:  # the pipe closed first; reap the process to report its exit code
                    procs[r].join(timeout=10)
                    status, payload = "error", f"rank {r} died with exit code {procs[r].exitcode} before reporting"
                (results if status == "ok" else errors)[r] = payload
                pending.discard(r)
            elif procs[r].sentinel in ready:
                procs[r].join()
                errors[r] = f"rank {r} died with exit code {procs[r].exitcode} (signal/crash) before reporting"
                pending.discard(r)
        if errors and give_up is None:
            give_up = time.monotonic() + grace
    for p in procs:
        p.join(timeout=5 if not (errors or pending) else 0.5)
        if p.is_alive():
            p.kill()
            p.join()
    if errors or pending:
        lines = []
        for r in sorted(errors):
            lines.append(f"----- rank {r} failed -----\n{errors[r]}")
        for r in sorted(pending):
            why = "killed after another rank failed" if errors else f"timed out after {timeout:.0f} s (hang?)"
            lines.append(f"----- rank {r}: {why} -----")
        raise DistributedTestError(f"{fn.__module__}.{fn.__qualname__} on {world_size} ranks:\n" + "\n".join(lines))
    return [results[r] for r in range(world_size)]
