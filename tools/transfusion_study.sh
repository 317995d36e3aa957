#!/usr/bin/env bash
# The Transfusion demo study (docs/transfusion.md): MoT vs dense at equal FLOPs per token on the picture demo,
# with the linear patch encoder (configs/demo_transfusion_cpu.yaml) and with the U-Net one, same data and
# schedule; then when MoT reaches dense's final validation losses (tools/compare_runs.py) and how well each
# model's pictures show their held-out captions (tools/sample.py --score: colour, half, shape, count, size,
# each with its standard error).
#   tools/transfusion_study.sh [OUT_DIR]       # default runs/transfusion_study; ~25 minutes a pair on 2 cores
#   SEEDS="1 2" ENCODERS="unet linear" SCORE=96 tools/transfusion_study.sh    # the defaults
# Runs go seed by seed, each encoder's MoT then dense, each scored as soon as it is trained; a finished run
# (OUT_DIR/<run>.done) or score (<run>/score.json) is not redone, so the study can be stopped and resumed.
# Both encoders see the same pictures (8 x 8 patches of 4 x 4 pixels, 2-D positions, v prediction) and get the
# same training FLOPs within 1.5% (flops.py, encoder convolutions included): the linear encoder's steps are the
# config's (1500); a U-Net-encoder token (unet_channels 16) costs 1/0.756 of a linear-encoder one at the
# demo's image-token fraction (0.76), hence UNET_STEPS=1150.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/transfusion_study}
set --  # setup_env.sh reads its own arguments
source launch/setup_env.sh "${MOT_EXTRAS:-mpi,megatron,dev}" >/dev/null
ds="$(dirname "$MOT_PY")/deepspeed"
mkdir -p "$out"
UNET=("model.continuous={image: {source: pixels, channels: 3, patch: 4, grid: [8, 8], boi_token: 256, eoi_token: 257, position_embedding: sincos2d, patch_encoder: unet, unet_channels: 16}}"
      "train.steps=${UNET_STEPS:-1150}")
for seed in ${SEEDS:-1 2}; do
  for encoder in ${ENCODERS:-unet linear}; do
    for variant in mot dense; do
      run="${encoder}_${variant}_s$seed"
      if [ ! -f "$out/$run.done" ]; then
        extra=(); [ "$variant" = dense ] && extra+=(model.untie=[])
        [ "$encoder" = unet ] && extra+=("${UNET[@]}")
        "$ds" --num_gpus 2 --master_port $((29700 + seed)) launch/pretrain.py --config configs/demo_transfusion_cpu.yaml \
          train.seed=$seed logging.tensorboard=false run.output_dir="$out/$run" "${extra[@]}" \
          > "$out/$run.log" 2>&1 || { echo "training $run failed: $out/$run.log"; exit 1; }
        touch "$out/$run.done"
      fi
      if [ ! -f "$out/$run/score.json" ]; then
        "$MOT_PY" tools/sample.py --checkpoint "$out/$run" --score "${SCORE:-96}" --steps 25 --json \
          --out "$out/$run.samples.png" > "$out/$run/score.json.tmp" 2> "$out/$run.sample.log" \
          || { echo "sampling $run failed: $out/$run.sample.log"; exit 1; }
        mv "$out/$run/score.json.tmp" "$out/$run/score.json"
      fi
    done
    runs=("$out/${encoder}_dense_s$seed" "$out/${encoder}_mot_s$seed")
    "$MOT_PY" tools/compare_runs.py "${runs[@]}" --labels dense,mot --json > "$out/compare_${encoder}_s$seed.json"
    "$MOT_PY" tools/compare_runs.py "${runs[@]}" --labels dense,mot --plot "$out/curves_${encoder}_s$seed.png"
  done
done
echo "done: $out"
