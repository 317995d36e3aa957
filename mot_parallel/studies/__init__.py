"""Studies: what tools/ measure and report, never imported by a training or sampling job.

analysis/ reads finished runs (curves, crossings, study reports); benchmarks/ times kernels, a whole
step and a naive MoT baseline for tools/bench_*.py and tools/profile_step.py."""
