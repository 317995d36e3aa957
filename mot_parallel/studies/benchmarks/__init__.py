"""Benchmark helpers: baselines (naive_mot.py) and interleaved timing (timing.py) for tools/bench_*.py."""
