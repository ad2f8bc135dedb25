#!/usr/bin/env bash
# Build the built-in model set of one ladder size on this machine: a pre-trained base, an
# instruction-tuned base, one expert per held-in category from each base, and the
# multitask baseline from each base; then score them all (benchmarks/model_set.py).
#
#   launch/local_experts.sh OUT [SIZE]      SIZE: nano (default), micro, tiny, milli
#
# Re-running it resumes: a finished run says "nothing to do" and a killed one resumes
# from its newest checkpoint. Budgets (steps) default per size, below; override with
# PT_STEPS, IT_STEPS, FT_STEPS, MT_STEPS (and WARMUP_STEPS, 50, of the fine-tuning runs);
# FT_STEPS_<category> sets one category's expert budget (by default milli's paraphrase
# expert trains 1200 steps, since paraphrase_order needs them, and its closed-book expert
# 900, unless FT_STEPS is set; docs/models_tasks_training.md). IT_MIXTURE is the
# instruction-tuning mixture: jaxmerge_instructions, and at milli
# jaxmerge_instructions_with_replay (a quarter pre-training replay), without which milli's
# closed-book expert from the instruction-tuned base stays under its bar (below milli
# replay lowers the zero-shot margin instead: docs/models_tasks_training.md).
# CATEGORIES (space-separated) limits the experts, SEED sets every run's RANDOM_SEED,
# JOBS runs that many trainings side by side (below), SCORE=0 skips the scoring and
# SCORE_MAX_EXAMPLES limits it (rows per task). BASES_ONLY=1 trains and scores the two
# bases alone (the spread over seeds: SEED=1 BASES_ONLY=1 launch/local_experts.sh OUT).
# GENERALISTS="c1 c2 ..." also trains, from the pre-trained base, one generalist per
# category named: all held-in tasks with that category's TILT_RATE times as often
# (jaxmerge_held_in_tilted_<c>), GEN_STEPS steps each (default half of MT_STEPS), into
# OUT/generalists/pretrained/<c>: the Recycle scenario's pool (benchmarks/recycle.py).
# GEN_TRUNK=N first trains one multitask trunk of N steps (OUT/generalists/trunk) and
# branches every generalist from it, so that the pool shares a training trajectory.
# BASES_FROM=DIR takes both bases ready-made from DIR/SIZE/{pretrained,instruction_tuned}/
# checkpoint_N (launch/demo_bases.sh's layout; linked into OUT, not copied) instead of
# training them; their steps come from the checkpoints' names.
# Instruction tuning trains 12000 steps at nano, 9000 at micro and 6000 at tiny and milli:
# each is the first budget that the next (3000 steps more) does not beat by more than 2 se
# on the instruction tasks' own validation split, or the longest measured (nano 12000:
# 2.4 past 9000; micro 9000: 3.4 past 6000; tiny 9000: 1.5 past 6000, inside; milli 6000:
# 4.8 past 3000; docs/models_tasks_training.md, "How long to instruction-tune" and the
# sections after it).
# Step counts are totals (T5X convention: fine-tuning continues the base's step);
# DECAY_STEPS is each fine-tuning run's own length (its learning-rate decay).
set -euo pipefail
OUT=${1:?usage: $0 OUT [nano|micro|tiny|milli]}
SIZE=${2:-nano}
declare -A ft_steps_of=()  # expert budgets that differ from FT_STEPS, by category
it_mixture=jaxmerge_instructions
case "$SIZE" in  # pre-training, instruction tuning, one expert, the multitask baseline
  nano) budget=(2000 12000 1000 1000) ;;
  micro) budget=(2000 9000 1000 1000) ;;
  tiny) budget=(2000 6000 1000 1000) ;;
  milli)
    budget=(2000 6000 300 1200) ft_steps_of=([paraphrase]=1200 [closed_book_qa]=900)
    it_mixture=jaxmerge_instructions_with_replay
    ;;
  *) echo "error: size '$SIZE' is not one of nano, micro, tiny, milli" >&2; exit 2 ;;
esac
[ -z "${FT_STEPS:-}" ] || ft_steps_of=()  # a budget given for every expert holds for all
PT_STEPS=${PT_STEPS:-${budget[0]}} IT_STEPS=${IT_STEPS:-${budget[1]}}
FT_STEPS=${FT_STEPS:-${budget[2]}} MT_STEPS=${MT_STEPS:-${budget[3]}}
CATEGORIES=${CATEGORIES:-"extractive_qa closed_book_qa sentiment topic structure_to_text summarization paraphrase multiple_choice_qa"}
SEED=${SEED:-0} WARMUP_STEPS=${WARMUP_STEPS:-50} GEN_STEPS=${GEN_STEPS:-$((MT_STEPS / 2))}
IT_MIXTURE=${IT_MIXTURE:-$it_mixture}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
train() {
  "$PYTHON" -m jaxmerge train --gin_file="gin_configs/models/t5_${SIZE}.gin" \
    --gin.RANDOM_SEED="$SEED" "$@"
}
finetune() { train --gin.LR_WARMUP_STEPS="$WARMUP_STEPS" "$@"; }

# Runs go through a pool of JOBS at a time (default 1); with JOBS > 1 each logs to
# OUT/logs/NAME.log. On this 2-core VM two nano runs side by side train 1.4-1.5x the
# tokens/s of one. The pre-trained base comes first; then the instruction-tuned base trains
# beside the pre-trained base's experts and multitask baseline, and its own runs follow it.
JOBS=${JOBS:-1}
pids=()
declare -A name_of
stop_pool() {  # each pooled run is a subshell running python: stop both
  local pid
  for pid in "${pids[@]}"; do
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
}
trap stop_pool EXIT  # a failed or killed launcher stops the rest
reap() {  # reap: wait until one pooled run ends; if it failed, name its log and exit 1
  local i
  while true; do
    for i in "${!pids[@]}"; do
      if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        local pid=${pids[$i]}
        unset "pids[$i]"
        pids=("${pids[@]}")
        wait "$pid" || {
          echo "error: ${name_of[$pid]} failed (exit $?); its log: $OUT/logs/${name_of[$pid]}.log" >&2
          exit 1
        }
        return
      fi
    done
    sleep 1
  done
}
run() {  # run NAME TRAIN_ARGS...: in the pool
  local name=$1
  shift
  if [ "$JOBS" -le 1 ]; then
    finetune "$@"
    return
  fi
  while [ "${#pids[@]}" -ge "$JOBS" ]; do reap; done
  mkdir -p "$OUT/logs"
  echo "started $name (log: $OUT/logs/$name.log)"
  finetune "$@" >"$OUT/logs/$name.log" 2>&1 &
  pids+=($!)
  name_of[$!]=$name
}
wait_for() {  # wait_for CHECKPOINT: until a pooled run has written it
  while [ ! -d "$1" ]; do
    [ "${#pids[@]}" -gt 0 ] || { echo "error: $1 was not written" >&2; exit 1; }
    reap
  done
}
base_runs() {  # base_runs NAME INITIAL_CHECKPOINT START_STEP: its experts and multitask baseline
  local base=$1 init=$2 start=$3 c steps_var steps
  for c in $CATEGORIES; do
    steps_var=FT_STEPS_$c
    steps=${!steps_var:-${ft_steps_of[$c]:-$FT_STEPS}}
    run "expert_${base}_$c" --gin_file=gin_configs/runs/expert.gin \
      --gin.MODEL_DIR="'$OUT/experts/$base/$c'" --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_held_in_$c'" \
      --gin.INITIAL_CHECKPOINT_PATH="'$init'" --gin.TRAIN_STEPS="$((start + steps))" \
      --gin.DECAY_STEPS="$steps"
  done
  run "multitask_$base" --gin_file=gin_configs/runs/multitask.gin \
    --gin.MODEL_DIR="'$OUT/multitask/$base'" --gin.INITIAL_CHECKPOINT_PATH="'$init'" \
    --gin.TRAIN_STEPS="$((start + MT_STEPS))" --gin.DECAY_STEPS="$MT_STEPS"
}

latest() {  # latest DIR: its checkpoint_<step> of the highest step, or nothing
  local d best="" step=-1
  for d in "$1"/checkpoint_*; do
    if [ -d "$d" ] && [[ ${d##*_} =~ ^[0-9]+$ ]] && [ "${d##*_}" -gt "$step" ]; then
      step=${d##*_} best=$d
    fi
  done
  echo "$best"
}
if [ -n "${BASES_FROM:-}" ]; then  # ready bases (launch/demo_bases.sh's layout): linked
  mkdir -p "$OUT"
  for base in pretrained instruction_tuned; do
    [ -n "$(latest "$BASES_FROM/$SIZE/$base")" ] || {
      echo "error: BASES_FROM=$BASES_FROM: no $BASES_FROM/$SIZE/$base/checkpoint_N" >&2
      exit 2
    }
    ln -sfn "$(cd "$BASES_FROM/$SIZE/$base" && pwd)" "$OUT/$base"
  done
  PT=$(latest "$OUT/pretrained") IT=$(latest "$OUT/instruction_tuned")
  PT_STEPS=${PT##*_}
  IT_STEPS=$((${IT##*_} - PT_STEPS))
else
  train --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'$OUT/pretrained'" \
    --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_pretrain'" --gin.TRAIN_STEPS="$PT_STEPS"
  PT="$OUT/pretrained/checkpoint_$PT_STEPS"
  IT="$OUT/instruction_tuned/checkpoint_$((PT_STEPS + IT_STEPS))"
  run instruction_tuned --gin_file=gin_configs/runs/instruction_tune.gin \
    --gin.MODEL_DIR="'$OUT/instruction_tuned'" --gin.INITIAL_CHECKPOINT_PATH="'$PT'" \
    --gin.MIXTURE_OR_TASK_NAME="'$IT_MIXTURE'" \
    --gin.TRAIN_STEPS="$((PT_STEPS + IT_STEPS))" --gin.DECAY_STEPS="$IT_STEPS"
fi
if [ "${BASES_ONLY:-0}" != 1 ]; then base_runs pretrained "$PT" "$PT_STEPS"; fi
gen_init=$PT gen_start=$PT_STEPS
if [ -n "${GENERALISTS:-}" ] && [ -n "${GEN_TRUNK:-}" ]; then  # branches of one trunk
  gen_start=$((PT_STEPS + GEN_TRUNK)) gen_init="$OUT/generalists/trunk/checkpoint_$gen_start"
  run generalist_trunk --gin_file=gin_configs/runs/multitask.gin \
    --gin.MODEL_DIR="'$OUT/generalists/trunk'" --gin.INITIAL_CHECKPOINT_PATH="'$PT'" \
    --gin.TRAIN_STEPS="$gen_start" --gin.DECAY_STEPS="$GEN_TRUNK"
  wait_for "$gen_init"
fi
for c in ${GENERALISTS:-}; do
  run "generalist_pretrained_$c" --gin_file=gin_configs/runs/multitask.gin \
    --gin.MODEL_DIR="'$OUT/generalists/pretrained/$c'" \
    --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_held_in_tilted_$c'" \
    --gin.INITIAL_CHECKPOINT_PATH="'$gen_init'" --gin.TRAIN_STEPS="$((gen_start + GEN_STEPS))" \
    --gin.DECAY_STEPS="$GEN_STEPS"
done
wait_for "$IT"
if [ "${BASES_ONLY:-0}" != 1 ]; then base_runs instruction_tuned "$IT" "$((PT_STEPS + IT_STEPS))"; fi
while [ "${#pids[@]}" -gt 0 ]; do reap; done
if [ "${SCORE:-1}" != 0 ]; then
  "$PYTHON" -m benchmarks.model_set "$OUT" --size "$SIZE" \
    ${SCORE_MAX_EXAMPLES:+--max_examples "$SCORE_MAX_EXAMPLES"}
fi
