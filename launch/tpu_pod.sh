#!/usr/bin/env bash
# Run one jaxmerge command on every worker of a Cloud TPU VM slice (a pod), as one JAX run:
#
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR_TYPE -- jaxmerge merge --method ties ... \
#       --output gs://bucket/merged
#
# 1. Reuses the TPU VM NAME in ZONE, or creates it (ACCELERATOR_TYPE, e.g. v5litepod-16,
#    v5p-64; RUNTIME, default v2-alpha-tpuv5-lite; SPOT=1 asks for spot capacity).
# 2. Copies this checkout to every worker (~/jaxmerge) and installs it there with the
#    pinned versions and JAX's TPU wheel (`pip install -c constraints.txt -e . jax[tpu]`).
# 3. Runs the command on all workers at once (`--worker=all`) with JAXMERGE_DISTRIBUTED=auto:
#    jax.distributed.initialize() finds the slice's workers from the TPU metadata itself.
#    Every worker writes ~/jaxmerge-run-<worker host>.log.
# 4. Copies every worker's log into LOG_DIR (default ./tpu-logs/NAME) and returns the
#    command's exit status (non-zero if any worker failed).
#
# PROJECT (default: gcloud's) selects the project; SKIP_INSTALL=1 skips step 2 on a reused
# VM; DRY_RUN=1 prints every gcloud command instead of running it. Inputs and outputs must
# be on storage every worker sees (gs:// through tensorstore, or a shared filesystem).
set -euo pipefail
usage="usage: $0 NAME ZONE ACCELERATOR_TYPE -- COMMAND [ARGS...]"
[ $# -ge 5 ] && [ "$4" = "--" ] || { echo "$usage" >&2; exit 2; }
NAME=$1 ZONE=$2 TYPE=$3
shift 4
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
LOG_DIR=${LOG_DIR:-tpu-logs/$NAME}
cd "$(dirname "$0")/.."

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[ -n "${PROJECT:-}" ] && where+=(--project="$PROJECT")
run() {  # run CMD...: print it (DRY_RUN=1) or run it
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

# 1. the slice
if [ "${DRY_RUN:-0}" = 1 ] || ! "${gcloud_tpu[@]}" describe "$NAME" "${where[@]}" >/dev/null 2>&1; then
  [ "${DRY_RUN:-0}" = 1 ] && echo "# if '${gcloud_tpu[*]} describe $NAME' finds no VM:"
  create=("${gcloud_tpu[@]}" create "$NAME" "${where[@]}" --accelerator-type="$TYPE"
    --version="$RUNTIME")
  [ "${SPOT:-0}" = 1 ] && create+=(--spot)
  run "${create[@]}"
fi

# 2. the package on every worker
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  tarball=${TMPDIR:-/tmp}/jaxmerge-$NAME.tar.gz
  run git archive --format=tar.gz --prefix=jaxmerge/ -o "$tarball" HEAD
  run "${gcloud_tpu[@]}" scp "$tarball" "$NAME:~/jaxmerge.tar.gz" "${where[@]}" --worker=all
  run "${gcloud_tpu[@]}" ssh "$NAME" "${where[@]}" --worker=all --command="rm -rf ~/jaxmerge && \
tar xzf ~/jaxmerge.tar.gz -C ~ && cd ~/jaxmerge && python3 -m pip install -q -c constraints.txt \
-e . && python3 -m pip install -q 'jax[tpu]==$(sed -n 's/^jax==//p' constraints.txt)' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
fi

# 3. the command on every worker, one JAX run
command=$(printf '%q ' "$@")
log='~/jaxmerge-run-$(hostname).log'
status=0
run "${gcloud_tpu[@]}" ssh "$NAME" "${where[@]}" --worker=all --command="cd ~/jaxmerge && \
JAXMERGE_DISTRIBUTED=auto PATH=\$HOME/.local/bin:\$PATH ${command% } > $log 2>&1; \
status=\$?; tail -n 3 $log; exit \$status" || status=$?

# 4. the logs
run mkdir -p "$LOG_DIR"
run "${gcloud_tpu[@]}" scp "$NAME:~/jaxmerge-run-*.log" "$LOG_DIR/" "${where[@]}" --worker=all ||
  echo "tpu_pod.sh: could not copy every worker's log into $LOG_DIR" >&2
[ "$status" = 0 ] || echo "tpu_pod.sh: the command failed (status $status); logs in $LOG_DIR" >&2
exit "$status"
