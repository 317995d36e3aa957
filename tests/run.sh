#!/usr/bin/env bash
# The test command (README). Sets up the environment, then runs pytest on 2-4 gloo processes per test.
#   tests/run.sh                 # default suite (CPU, < 15 min on 2 cores)
#   tests/run.sh --slow          # also the slow tests (Slurm cluster on loopback, long trainings)
#   tests/run.sh -k tp_layers    # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh "mpi,megatron,dev"
exec "$MOT_PY" -m pytest -q tests "$@"
