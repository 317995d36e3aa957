"""Process start-up (launch_env, init), device choice (device), topology and its adapters, collectives."""
from ..lazy_exports import lazy_exports

# name -> submodule; imported on first use (PEP 562): the launcher reads its environment before torch loads
_EXPORTS = {"DistContext": "startup", "barrier_if_distributed": "startup", "init_distributed": "startup",
            "shutdown_distributed": "startup", "LaunchEnv": "launch_env", "detect_launch_env": "launch_env",
            "expand_hostlist": "launch_env", "DeepSpeedMPU": "mpu", "ParallelTopology": "topology"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
