#!/usr/bin/env bash
# Build the built-in model set of one ladder size on this machine: a pre-trained base, an
# instruction-tuned base, one expert per held-in category from each base, and the
# multitask baseline from each base; then score them all (benchmarks/model_set.py).
#
#   launch/local_experts.sh OUT [SIZE]      SIZE: nano (default), micro, tiny, milli
#
# Re-running it resumes: a finished run says "nothing to do" and a killed one resumes
# from its newest checkpoint. Budgets (steps) default per size, below; override with
# PT_STEPS, IT_STEPS, FT_STEPS, MT_STEPS (and WARMUP_STEPS, 50, of the fine-tuning runs). CATEGORIES (space-separated) limits the
# experts, SEED sets every run's RANDOM_SEED, SCORE=0 skips the scoring and
# SCORE_MAX_EXAMPLES limits it (rows per task).
# Step counts are totals (T5X convention: fine-tuning continues the base's step);
# DECAY_STEPS is each fine-tuning run's own length (its learning-rate decay).
set -euo pipefail
OUT=${1:?usage: $0 OUT [nano|micro|tiny|milli]}
SIZE=${2:-nano}
case "$SIZE" in  # pre-training, instruction tuning, one expert, the multitask baseline
  nano | micro) budget=(2000 1000 500 2000) ;;
  tiny) budget=(2000 1000 500 2000) ;;
  milli) budget=(1500 600 300 1200) ;;
  *) budget=(2000 1000 500 2000) ;;
esac
PT_STEPS=${PT_STEPS:-${budget[0]}} IT_STEPS=${IT_STEPS:-${budget[1]}}
FT_STEPS=${FT_STEPS:-${budget[2]}} MT_STEPS=${MT_STEPS:-${budget[3]}}
CATEGORIES=${CATEGORIES:-"extractive_qa closed_book_qa sentiment topic structure_to_text summarization paraphrase multiple_choice_qa"}
SEED=${SEED:-0} WARMUP_STEPS=${WARMUP_STEPS:-50}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
train() {
  "$PYTHON" -m jaxmerge train --gin_file="gin_configs/models/t5_${SIZE}.gin" \
    --gin.RANDOM_SEED="$SEED" "$@"
}
finetune() { train --gin.LR_WARMUP_STEPS="$WARMUP_STEPS" "$@"; }

train --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'$OUT/pretrained'" \
  --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_pretrain'" --gin.TRAIN_STEPS="$PT_STEPS"
PT="$OUT/pretrained/checkpoint_$PT_STEPS"
finetune --gin_file=gin_configs/runs/instruction_tune.gin --gin.MODEL_DIR="'$OUT/instruction_tuned'" \
  --gin.INITIAL_CHECKPOINT_PATH="'$PT'" --gin.TRAIN_STEPS="$((PT_STEPS + IT_STEPS))" \
  --gin.DECAY_STEPS="$IT_STEPS"
IT="$OUT/instruction_tuned/checkpoint_$((PT_STEPS + IT_STEPS))"

# Experts of one base run JOBS at a time (default 1), each logging to OUT/logs/: on this
# 2-core VM two nano runs side by side train 1.4-1.5x the tokens/s of one.
JOBS=${JOBS:-1}
pids=()
wait_oldest() { wait "${pids[0]}"; pids=("${pids[@]:1}"); }
for base in pretrained instruction_tuned; do
  init=$([ "$base" = pretrained ] && echo "$PT" || echo "$IT")
  start=$([ "$base" = pretrained ] && echo "$PT_STEPS" || echo "$((PT_STEPS + IT_STEPS))")
  for c in $CATEGORIES; do
    args=(--gin_file=gin_configs/runs/expert.gin --gin.MODEL_DIR="'$OUT/experts/$base/$c'"
      --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_held_in_$c'"
      --gin.INITIAL_CHECKPOINT_PATH="'$init'" --gin.TRAIN_STEPS="$((start + FT_STEPS))"
      --gin.DECAY_STEPS="$FT_STEPS")
    if [ "$JOBS" -gt 1 ]; then
      mkdir -p "$OUT/logs"
      finetune "${args[@]}" >"$OUT/logs/expert_${base}_$c.log" 2>&1 &
      pids+=($!)
      if [ "${#pids[@]}" -ge "$JOBS" ]; then wait_oldest; fi
    else
      finetune "${args[@]}"
    fi
  done
  while [ "${#pids[@]}" -gt 0 ]; do wait_oldest; done
  finetune --gin_file=gin_configs/runs/multitask.gin --gin.MODEL_DIR="'$OUT/multitask/$base'" \
    --gin.INITIAL_CHECKPOINT_PATH="'$init'" --gin.TRAIN_STEPS="$((start + MT_STEPS))" \
    --gin.DECAY_STEPS="$MT_STEPS"
done
if [ "${SCORE:-1}" != 0 ]; then
  "$PYTHON" -m benchmarks.model_set "$OUT" --size "$SIZE" \
    ${SCORE_MAX_EXAMPLES:+--max_examples "$SCORE_MAX_EXAMPLES"}
fi
