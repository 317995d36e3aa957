"""Distributed start-up, in one place: launcher discovery -> device/backend -> torch.distributed."""
from __future__ import annotations

import atexit
import datetime
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from . import device as dev
from .launch_env import LaunchEnv, detect_launch_env


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(env: Optional[LaunchEnv] = None, *, force_cpu: bool = False,
                     require_process_group: bool = False, timeout_s: float = 1800.0) -> DistContext:
    """Initialise torch.distributed from whatever launched us; picks cuda+nccl or cpu+gloo.

    World size 1 creates no process group unless `require_process_group` (DeepSpeed needs one).
    An already initialised process group is reused (e.g. inside Megatron or a test harness), timeouts untouched.
    `timeout_s` bounds every wait in a collective or the rendezvous, in the world group and in every group
    created after it (config: parallel.collective_timeout_s); a stopped or dead peer then fails the wait.
    """
    env = env or detect_launch_env(argv=sys.argv)
    device = dev.pick_device(env.local_rank, force_cpu=force_cpu)
    backend = dev.backend_for(device)
    if not dev.is_accelerator(device):
        dev.share_cpu_threads(env.local_world_size)
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != env.world_size:
            raise RuntimeError(f"torch.distributed is already initialised with world size {dist.get_world_size()}, "
                               f"but the launcher says {env.world_size}")
        return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank, device,
                           dist.get_backend(), env.launcher)
    if env.world_size > 1 or require_process_group:
        if env.launcher == "none":  # a lone process (plain `python`): any free local port will do
            import dataclasses
            import socket
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                env = dataclasses.replace(env, master_addr="127.0.0.1", master_port=sock.getsockname()[1])
        env.export()
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                timeout=timeout)
        _default_group_timeout(timeout)
        # Exiting with a live group lets gloo/nccl threads touch Python objects during interpreter
        # teardown (seen: SIGABRT from ProcessGroupGloo::runLoop at exit). Tear it down first.
        atexit.register(shutdown_distributed)
    return DistContext(env.rank, env.world_size, env.local_rank, device, backend, env.launcher)


def _default_group_timeout(timeout: datetime.timedelta) -> None:
    """Make `timeout` the default of every later new_group().

    torch gives a group created without a timeout its backend's default (gloo 30 min, NCCL 10 min), not
    the world group's; our topology and DeepSpeed (pipeline grid, ZeRO groups) create theirs that way, so
    a stopped rank would still block the others for that long in a collective on one of those groups. torch reads these
    module globals on every new_group() call (distributed_c10d._get_default_timeout); no API sets them.
    """
    from torch.distributed import distributed_c10d as c10d
    for name in ("default_pg_timeout", "default_pg_nccl_timeout"):
        if isinstance(getattr(c10d, name, None), datetime.timedelta):
            setattr(c10d, name, timeout)


def shutdown_distributed() -> None:
    """Destroy the default process group if it is still alive (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier_if_distributed() -> None:
    """A world barrier when a process group exists; nothing in a single process without one."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
