"""Process start-up (launch_env, init), device choice (device), topology and its adapters, collectives."""
from .startup import DistContext, barrier_if_distributed, init_distributed, shutdown_distributed
from .launch_env import LaunchEnv, detect_launch_env, expand_hostlist
from .mpu import DeepSpeedMPU
from .topology import ParallelTopology

__all__ = ["DeepSpeedMPU", "DistContext", "LaunchEnv", "ParallelTopology", "barrier_if_distributed",
           "detect_launch_env", "expand_hostlist", "init_distributed", "shutdown_distributed"]
