#!/usr/bin/env bash
# Rebuild the demo's shipped bases with the project's own recipes: for each size, the
# pre-trained base (gin_configs/runs/pretrain.gin on jaxmerge_pretrain) and the
# instruction-tuned base (instruction_tune.gin on jaxmerge_instructions, from it).
#
#   launch/demo_bases.sh [OUT]      # default OUT: assets/demo_bases (what demo.gin reads)
#
# SIZES (default "nano micro"), PT_STEPS (2000) and IT_STEPS (3000) set the budgets;
# SEED (0) every run's seed; IT_MIXTURE (jaxmerge_instructions) the instruction-tuning
# mixture (jaxmerge_instructions_with_replay adds pre-training replay). Writes
# OUT/<size>/{pretrained,instruction_tuned}/checkpoint_N (parameters only: the optimizer
# state is left out), with train_stats.json and config.gin.
# A killed run resumes (the work lies in OUT/.work until the end).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-assets/demo_bases}
SIZES=${SIZES:-"nano micro"} PT_STEPS=${PT_STEPS:-2000} IT_STEPS=${IT_STEPS:-3000}
SEED=${SEED:-0} PYTHON=${PYTHON:-python} IT_MIXTURE=${IT_MIXTURE:-jaxmerge_instructions}
WARMUP_STEPS=${WARMUP_STEPS:-$((IT_STEPS > 50 ? 50 : IT_STEPS - 1))}  # the recipe's 50
for size in $SIZES; do
  work="$OUT/.work/$size"
  train() {
    "$PYTHON" -m jaxmerge train --gin_file="gin_configs/models/t5_$size.gin" \
      --gin.RANDOM_SEED="$SEED" "$@"
  }
  train --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'$work/pretrained'" \
    --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_pretrain'" --gin.TRAIN_STEPS="$PT_STEPS"
  train --gin_file=gin_configs/runs/instruction_tune.gin \
    --gin.MODEL_DIR="'$work/instruction_tuned'" --gin.MIXTURE_OR_TASK_NAME="'$IT_MIXTURE'" \
    --gin.INITIAL_CHECKPOINT_PATH="'$work/pretrained/checkpoint_$PT_STEPS'" \
    --gin.TRAIN_STEPS="$((PT_STEPS + IT_STEPS))" --gin.DECAY_STEPS="$IT_STEPS" \
    --gin.LR_WARMUP_STEPS="$WARMUP_STEPS"
  for base in pretrained instruction_tuned; do
    step=$PT_STEPS
    [ "$base" = pretrained ] || step=$((PT_STEPS + IT_STEPS))
    rm -rf "${OUT:?}/$size/$base"
    mkdir -p "$OUT/$size/$base"
    cp -r "$work/$base/checkpoint_$step" "$OUT/$size/$base/"
    rm -f "$OUT/$size/$base/checkpoint_$step/jaxmerge_optimizer_state.msgpack"
    cp "$work/$base/train_stats.json" "$work/$base/config.gin" "$OUT/$size/$base/"
  done
done
rm -rf "${OUT:?}/.work"
echo "bases written under $OUT"
