"""The one place that knows about accelerators: device and backend choice, RNG state, memory, sync.

Everything else asks this module; no other file names the CUDA device type or the NCCL backend
(tests/test_device_literals.py enforces it).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from .accelerators import peak_tflops

_ACCEL = "cuda"  # torch's device type for NVIDIA (and ROCm) GPUs
_ACCEL_BACKEND = "nccl"
_CPU_BACKEND = "gloo"


def accelerator_available() -> bool:
    return torch.cuda.is_available()


def pick_device(local_rank: int = 0, force_cpu: bool = False) -> torch.device:
    """cuda:<local_rank mod #gpus> when GPUs exist (and sets it current), else cpu."""
    if not force_cpu and accelerator_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device(_ACCEL, index)
    return torch.device("cpu")


def share_cpu_threads(local_processes: int) -> Optional[int]:
    """CPU runs: give each of a node's `local_processes` processes its share of the cores this process may use.
    torch gives every process all of them, so N processes on a node run N x cores compute threads that evict
    each other (and anything else running there, a sampler say) at every matmul. OMP_NUM_THREADS, when set, is
    the user's choice and is kept. Returns the threads set, or None when kept."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, local_processes))
    torch.set_num_threads(threads)
    return threads


def current_device() -> torch.device:
    """The accelerator this process has made current (pick_device / Megatron's set-up), else cpu."""
    return torch.device(_ACCEL, torch.cuda.current_device()) if accelerator_available() else torch.device("cpu")


def backend_for(device: torch.device) -> str:
    """nccl for GPUs, gloo for CPU."""
    return _ACCEL_BACKEND if device.type == _ACCEL else _CPU_BACKEND


def is_accelerator(device: torch.device) -> bool:
    return device.type == _ACCEL


def synchronize(device: torch.device) -> None:
    if is_accelerator(device):
        torch.cuda.synchronize(device)


def get_rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if is_accelerator(device) else torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if is_accelerator(device):
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def manual_seed(seed: int, device: torch.device) -> None:
    """Seed the generator that `device`'s random ops draw from (the CPU one for cpu)."""
    if is_accelerator(device):
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated memory on an accelerator; peak resident set size of the process on CPU."""
    if is_accelerator(device):
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def device_name(device: Optional[torch.device] = None) -> str:
    if device is not None and is_accelerator(device):
        return torch.cuda.get_device_name(device)
    return "cpu"


def set_host_allocator(policy: str) -> bool:
    """CPU runs: how glibc treats large freed blocks (PyTorch has a caching allocator on GPUs, not on CPU).

    "keep"    keep freed memory in the heap (benchmarks): glibc otherwise serves every large tensor with a
              fresh mmap and unmaps it on free, so each step page-faults its activations back in (~0.25 ms
              per MB, hundreds of ms per step at benchmark shapes, varying with allocation history);
    "release" serve every block >= 64 KiB by mmap (a fixed threshold, so it does not adapt upwards) and
              return it on free (memory measurement): resident memory then follows live tensors, close to
              what a GPU's allocated-memory counter reports.
    Returns whether the setting took effect (glibc only)."""
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    settings = {"keep": ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1)),
                "release": ((m_mmap_threshold, 64 * 1024), (m_trim_threshold, 128 * 1024))}[policy]
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return all(bool(libc.mallopt(option, value)) for option, value in settings)
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def sync_debug_mode(mode: str = "error"):
    """Within the block, any device->host synchronisation warns ('warn') or raises ('error') on an
    accelerator (torch's CUDA sync debug mode); a no-op on CPU, where nothing synchronises."""
    if not accelerator_available():
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for peak_memory_gb (accelerators; CPU peak RSS cannot be reset here)."""
    if is_accelerator(device):
        torch.cuda.reset_peak_memory_stats(device)


def reserved_memory_gb(device: torch.device) -> float:
    """Peak memory the caching allocator reserved from the driver (>= allocated; 0 on CPU)."""
    return torch.cuda.max_memory_reserved(device) / 2**30 if is_accelerator(device) else 0.0


def empty_cache() -> None:
    if accelerator_available():
        torch.cuda.empty_cache()


def peak_bf16_tflops(device: torch.device) -> Optional[float]:
    """Dense bf16 tensor-core peak of `device` from the table in accelerators.py (None: unknown/CPU)."""
    if not is_accelerator(device):
        return None
    return peak_tflops(device_name(device))


def describe(device: torch.device) -> dict:
    """Name, memory and versions, for reports."""
    info = {"device": str(device), "name": device_name(device), "torch": torch.__version__}
    if is_accelerator(device):
        props = torch.cuda.get_device_properties(device)
        info.update(memory_gb=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, runtime=torch.version.cuda)
    return info


def allocated_memory_gb(device: torch.device) -> float:
    """Memory allocated now (accelerators; 0 on CPU)."""
    return torch.cuda.memory_allocated(device) / 2**30 if is_accelerator(device) else 0.0
