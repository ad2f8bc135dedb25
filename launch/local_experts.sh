#!/usr/bin/env bash
# Make the built-in experts on this machine: a pre-trained base, an instruction-tuned
# base, one expert per held-in category from each base, and the multitask baseline
# from each base. Usage: launch/local_experts.sh OUT [MODEL] (MODEL: tiny, mini, ...).
# Step counts are totals (T5X convention: fine-tuning continues the base's step);
# DECAY_STEPS is each fine-tuning run's own length (its learning-rate decay).
set -euo pipefail
OUT=${1:?usage: $0 OUT [MODEL]}
MODEL=${2:-tiny}
PT_STEPS=${PT_STEPS:-2000} IT_STEPS=${IT_STEPS:-1000} FT_STEPS=${FT_STEPS:-500}
CATEGORIES="extractive_qa closed_book_qa sentiment topic structure_to_text summarization paraphrase multiple_choice_qa"
cd "$(dirname "$0")/.."
train() { python -m jaxmerge train --gin_file="gin_configs/models/t5_${MODEL}.gin" "$@"; }

train --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'$OUT/pretrained'" \
  --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_pretrain'" --gin.TRAIN_STEPS="$PT_STEPS"
PT="$OUT/pretrained/checkpoint_$PT_STEPS"
train --gin_file=gin_configs/runs/instruction_tune.gin --gin.MODEL_DIR="'$OUT/instruction_tuned'" \
  --gin.INITIAL_CHECKPOINT_PATH="'$PT'" --gin.TRAIN_STEPS="$((PT_STEPS + IT_STEPS))" \
  --gin.DECAY_STEPS="$IT_STEPS"
IT="$OUT/instruction_tuned/checkpoint_$((PT_STEPS + IT_STEPS))"

for base in pretrained instruction_tuned; do
  init=$([ "$base" = pretrained ] && echo "$PT" || echo "$IT")
  start=$([ "$base" = pretrained ] && echo "$PT_STEPS" || echo "$((PT_STEPS + IT_STEPS))")
  for c in $CATEGORIES; do
    train --gin_file=gin_configs/runs/expert.gin --gin.MODEL_DIR="'$OUT/experts/$base/$c'" \
      --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_held_in_$c'" \
      --gin.INITIAL_CHECKPOINT_PATH="'$init'" --gin.TRAIN_STEPS="$((start + FT_STEPS))" \
      --gin.DECAY_STEPS="$FT_STEPS"
  done
  train --gin_file=gin_configs/runs/multitask.gin --gin.MODEL_DIR="'$OUT/multitask/$base'" \
    --gin.INITIAL_CHECKPOINT_PATH="'$init'" --gin.TRAIN_STEPS="$((start + 8 * FT_STEPS))" \
    --gin.DECAY_STEPS="$((8 * FT_STEPS))"
done
