#!/usr/bin/env bash
# The main job (README): the laptop demo on 2 CPU processes under the deepspeed launcher.
#   launch/demo.sh [key=value ...]     e.g. launch/demo.sh train.steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh
exec "$(dirname "$MOT_PY")/deepspeed" --num_gpus 2 --master_port "${MASTER_PORT:-29511}" \
  launch/pretrain.py --config configs/demo_cpu.yaml "$@"
