#!/usr/bin/env bash
# Run one jaxmerge command as N JAX processes on this machine, joined as the hosts of a pod
# are (jax.distributed, coordinator on 127.0.0.1, gloo CPU collectives):
#
#   launch/local.sh N jaxmerge merge --method ties --base B --experts E1 E2 --output OUT
#
# Each process gets DEVICES/N CPU devices (DEVICES, default 8) and the JAXMERGE_* variables
# that jaxmerge/distributed.py reads (coordinator address, process count, process id).
# Process 0 writes to this console; process i > 0 to LOG_DIR/process_<i>.log (LOG_DIR
# defaults to a new temporary directory, named at the start). The first process to fail
# stops the others (TERM, then KILL after 5 s); the launcher returns its exit status and
# names it, or 0 when all succeed. PORT (default: a free one) is the coordinator's port;
# DRY_RUN=1 prints each process's command line and runs nothing.
set -euo pipefail
usage="usage: $0 N COMMAND [ARGS...]   (e.g. $0 2 jaxmerge eval ...)"
N=${1:?$usage}
shift
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
case "$N" in '' | *[!0-9]* | 0) echo "error: N='$N' is not a positive integer" >&2; exit 2 ;; esac
DEVICES=${DEVICES:-8}
if [ $((DEVICES % N)) -ne 0 ]; then
  echo "error: DEVICES=$DEVICES is not a multiple of N=$N (each process gets DEVICES/N)" >&2
  exit 2
fi
PER_PROCESS=$((DEVICES / N))
if [ -z "${PORT:-}" ]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
ADDRESS="127.0.0.1:$PORT"

env_of() {  # env_of I: sets VARS to the variables process I runs with
  VARS=("JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}"
    "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$PER_PROCESS"
    "JAXMERGE_COORDINATOR_ADDRESS=$ADDRESS" "JAXMERGE_NUM_PROCESSES=$N" "JAXMERGE_PROCESS_ID=$1")
}

if [ "${DRY_RUN:-0}" = 1 ]; then
  for ((i = 0; i < N; i++)); do
    env_of "$i"
    echo "env $(printf '%q ' "${VARS[@]}" "$@")" | sed 's/ $//'
  done
  exit 0
fi

LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/jaxmerge-local.XXXXXX")}
mkdir -p "$LOG_DIR"
echo "local.sh: $N processes x $PER_PROCESS CPU devices, coordinator $ADDRESS;" \
  "logs of processes 1..$((N - 1)) in $LOG_DIR" >&2

declare -A index_of
stop_all() {
  local pid
  for pid in "${!index_of[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local alive=0
    for pid in "${!index_of[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return
    sleep 0.5
  done
  for pid in "${!index_of[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  env_of "$i"
  if [ "$i" = 0 ]; then
    env "${VARS[@]}" "$@" &
  else
    env "${VARS[@]}" "$@" >"$LOG_DIR/process_$i.log" 2>&1 &
  fi
  index_of[$!]=$i
done

while [ ${#index_of[@]} -gt 0 ]; do
  status=0
  wait -n -p done_pid "${!index_of[@]}" || status=$?
  i=${index_of[$done_pid]}
  unset "index_of[$done_pid]"
  if [ "$status" != 0 ]; then
    where=""
    [ "$i" != 0 ] && where="; its log: $LOG_DIR/process_$i.log"
    echo "local.sh: process $i of $N (pid $done_pid) exited with status $status$where;" \
      "stopping the other ${#index_of[@]}" >&2
    stop_all
    wait 2>/dev/null || true
    exit "$status"
  fi
done
echo "local.sh: all $N processes exited 0" >&2
