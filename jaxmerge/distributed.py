"""Joining the processes of one run into one JAX runtime: `jax.distributed`, never our own.

A run on a TPU pod, a GPU cluster or several processes on one machine is JAX's
multi-controller model: every process runs the same command, `jax.distributed.initialize`
joins them through one coordinator, and from then on `jax.devices()` is the global device
list and arrays are global (each process holds its own shards). Where the settings come
from, first match wins:

1. explicit values (the `jaxmerge` flags `--coordinator_address`, `--num_processes`,
   `--process_id`);
2. the environment: JAXMERGE_COORDINATOR_ADDRESS, JAXMERGE_NUM_PROCESSES,
   JAXMERGE_PROCESS_ID (what `launch/local.sh` sets);
3. `--distributed=auto` / JAXMERGE_DISTRIBUTED=auto, or a SLURM step of more than one task
   (SLURM_STEP_NUM_TASKS > 1 and SLURM_PROCID set, as `srun` sets them; a batch script
   itself is one process), or a multi-host TPU slice that names its workers
   (TPU_WORKER_HOSTNAMES with more than one host): JAX's own cluster detection
   (`jax.distributed.initialize()` with no arguments), which reads a TPU VM's metadata,
   SLURM's variables or GKE's, as t5x's and big_vision's launchers rely on;
4. otherwise one process, and nothing is initialized.

On CPU, cross-process collectives are gloo's (`jax_cpu_collectives_implementation`); on
GPU and TPU that setting is not used. `heartbeat_timeout_s` bounds how long a process
waits for a peer that died: JAX's coordination service then reports the dead task
("Task N heartbeat timeout") to every other process, which stops.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from jaxmerge.errors import InputError

ENV_COORDINATOR = "JAXMERGE_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXMERGE_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXMERGE_PROCESS_ID"
ENV_MODE = "JAXMERGE_DISTRIBUTED"

DEFAULT_HEARTBEAT_TIMEOUT_S = 60
DEFAULT_INITIALIZATION_TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to join: `auto` (JAX's cluster detection) or an explicit coordinator, or neither."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    @property
    def multi_process(self) -> bool:
        return self.auto or (self.num_processes or 1) > 1


def _int(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}={value!r}: not an integer") from None


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    mode: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """The settings of this process, from explicit values, then the environment (see module)."""
    env = os.environ if environ is None else environ
    mode = mode or env.get(ENV_MODE) or "default"
    if mode not in ("default", "auto", "off"):
        raise InputError(f"--distributed={mode!r}: not one of auto, off")
    if mode == "off":
        return Settings()
    explicit = (coordinator_address, num_processes, process_id)
    if all(v is None for v in explicit):
        coordinator_address = env.get(ENV_COORDINATOR) or None
        num_processes = _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
        process_id = _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
        names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    else:
        names = ("--coordinator_address", "--num_processes", "--process_id")
    given = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in given):
        missing = [n for n, v in zip(names, given, strict=True) if v is None]
        if missing:
            raise InputError(f"{missing[0]} is missing: {', '.join(names)} go together")
        if num_processes < 1:
            raise InputError(f"{names[1]}={num_processes}: must be at least 1")
        if not 0 <= process_id < num_processes:
            raise InputError(f"{names[2]}={process_id}: must be in [0, {num_processes})")
        if ":" not in coordinator_address:
            raise InputError(f"{names[0]}={coordinator_address!r}: expected HOST:PORT")
        if num_processes == 1:
            return Settings()
        return Settings(coordinator_address, num_processes, process_id)
    slurm_tasks = _int(env.get("SLURM_STEP_NUM_TASKS"), "SLURM_STEP_NUM_TASKS") or 1
    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if mode == "auto" or (slurm_tasks > 1 and "SLURM_PROCID" in env) or len(tpu_hosts) > 1:
        return Settings(auto=True)
    return Settings()


def initialize(
    settings: Settings,
    *,
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S,
    initialization_timeout_s: int = DEFAULT_INITIALIZATION_TIMEOUT_S,
) -> None:
    """Joins this process to the run (`jax.distributed.initialize`); one process: nothing.

    Call before anything touches a JAX backend. On CPU the collectives across processes
    are gloo's.
    """
    if not settings.multi_process:
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(
        initialization_timeout=initialization_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
    )
    if not settings.auto:
        kwargs.update(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
        )
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # auto with no cluster to detect, or bad values
        raise InputError(f"jax.distributed.initialize: {e}") from None
    global _joined
    _joined = True


_joined = False


def joined() -> bool:
    """Whether `initialize` joined this process to a run of several."""
    return _joined


def describe() -> str:
    """'process 1 of 2 (4 of 8 devices)', for the one line a command prints when it starts."""
    import jax

    return (
        f"process {jax.process_index()} of {jax.process_count()} "
        f"({jax.local_device_count()} of {jax.device_count()} devices)"
    )


PEER_FAILURE_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "heartbeat timeout",
    "Gloo",
    "coordination service",
)


def is_peer_failure(error: BaseException) -> bool:
    """Whether a runtime error says another process of the run is gone (see the module)."""
    text = str(error)
    return type(error).__name__ == "JaxRuntimeError" and any(
        m in text for m in PEER_FAILURE_MARKERS
    )


def peer_failure_reason(error: BaseException) -> str:
    """The part of a runtime error's text that says what failed, without XLA's repeats."""
    text = " ".join(str(error).split())
    for marker in PEER_FAILURE_MARKERS:
        at = text.find(marker)
        if at >= 0:
            start = max(text.rfind(": ", 0, at) + 2, at - 60, 0)
            return text[start : start + 200]
    return text[-200:]
