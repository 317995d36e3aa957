#!/usr/bin/env bash
# The Transfusion demo study (docs/transfusion.md): MoT vs dense at equal FLOPs per token on the picture demo,
# two seeds each, same data and schedule; then when MoT reaches dense's final validation losses
# (tools/compare_runs.py) and how well each model's pictures match their captions (tools/sample.py --score).
#   tools/transfusion_study.sh [OUT_DIR]          # default runs/transfusion_study; ~25 minutes on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/transfusion_study}
set --  # setup_env.sh reads its own arguments
source launch/setup_env.sh "${MOT_EXTRAS:-mpi,megatron,dev}" >/dev/null
ds="$(dirname "$MOT_PY")/deepspeed"
for seed in 1 2; do
  for variant in dense mot; do
    extra=(); [ "$variant" = dense ] && extra=(model.untie=[])
    "$ds" --num_gpus 2 --master_port $((29700 + seed)) launch/pretrain.py --config configs/demo_transfusion_cpu.yaml \
      train.seed=$seed logging.tensorboard=false run.output_dir="$out/${variant}_s$seed" "${extra[@]}" \
      > "$out.${variant}_s$seed.log" 2>&1 || { echo "training $variant seed $seed failed: $out.${variant}_s$seed.log"; exit 1; }
  done
done
for seed in 1 2; do
  "$MOT_PY" tools/compare_runs.py "$out/dense_s$seed" "$out/mot_s$seed" --labels dense,mot --json > "$out/compare_s$seed.json"
  "$MOT_PY" tools/compare_runs.py "$out/dense_s$seed" "$out/mot_s$seed" --labels dense,mot --plot "$out/curves_s$seed.png"
done
for run in dense_s1 mot_s1 dense_s2 mot_s2; do
  "$MOT_PY" tools/sample.py --checkpoint "$out/$run" --score 48 --steps 25 --json --out "$out/$run/samples.png" \
    | tail -n 11 > "$out/$run/score.json"
done
echo "done: $out"
