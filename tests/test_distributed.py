"""Where a process learns that it is one of several: flags, JAXMERGE_* variables, SLURM."""

import pytest

from jaxmerge import distributed
from jaxmerge.distributed import Settings
from jaxmerge.errors import InputError


def test_one_process_when_nothing_says_otherwise():
    assert distributed.resolve(environ={}) == Settings()
    assert not distributed.resolve(environ={}).multi_process


def test_flags_win_over_the_environment():
    env = {
        "JAXMERGE_COORDINATOR_ADDRESS": "10.0.0.1:1",
        "JAXMERGE_NUM_PROCESSES": "4",
        "JAXMERGE_PROCESS_ID": "3",
    }
    got = distributed.resolve("127.0.0.1:9", 2, 1, environ=env)
    assert got == Settings("127.0.0.1:9", 2, 1)
    assert distributed.resolve(environ=env) == Settings("10.0.0.1:1", 4, 3)


def test_one_process_of_one_initializes_nothing():
    assert not distributed.resolve("127.0.0.1:9", 1, 0, environ={}).multi_process


def test_slurm_step_and_auto_use_jax_cluster_detection():
    slurm = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_ID": "77"}
    assert distributed.resolve(environ=slurm) == Settings(auto=True)
    one_task = {"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert distributed.resolve(environ=one_task) == Settings()
    batch_script = {"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}  # sbatch itself, not srun
    assert distributed.resolve(environ=batch_script) == Settings()
    assert distributed.resolve(mode="auto", environ={}) == Settings(auto=True)
    pod = {"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}
    assert distributed.resolve(environ=pod) == Settings(auto=True)
    assert distributed.resolve(environ={"TPU_WORKER_HOSTNAMES": "10.0.0.2"}) == Settings()
    assert distributed.resolve(environ={"JAXMERGE_DISTRIBUTED": "auto"}) == Settings(auto=True)
    assert distributed.resolve(mode="off", environ=slurm) == Settings()


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        (dict(num_processes=2, process_id=0), {}, "--coordinator_address is missing"),
        (dict(coordinator_address="h:1", num_processes=2), {}, "--process_id is missing"),
        (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, "[0, 2)"),
        (dict(coordinator_address="h", num_processes=2, process_id=0), {}, "HOST:PORT"),
        (dict(coordinator_address="h:1", num_processes=0, process_id=0), {}, "at least 1"),
        ({}, {"JAXMERGE_NUM_PROCESSES": "two"}, "JAXMERGE_NUM_PROCESSES='two'"),
        ({}, {"JAXMERGE_NUM_PROCESSES": "2"}, "JAXMERGE_COORDINATOR_ADDRESS is missing"),
        (dict(mode="on"), {}, "--distributed='on'"),
    ],
)
def test_bad_settings_name_the_flag_or_variable(kwargs, env, message):
    with pytest.raises(InputError) as e:
        distributed.resolve(environ=env, **kwargs)
    assert message in str(e.value)


def test_cli_bad_settings_exit_2_with_one_line(run_cli, tmp_path):
    out = run_cli("--num_processes", "2", "--process_id", "0", "inspect", tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "jaxmerge inspect: error: --coordinator_address is missing: "
        "--coordinator_address, --num_processes, --process_id go together"
    ]


def test_peer_failure_is_recognised_only_from_jax_runtime_errors():
    class JaxRuntimeError(RuntimeError):
        pass

    assert distributed.is_peer_failure(
        JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection closed by peer [::1]:5")
    )
    assert not distributed.is_peer_failure(RuntimeError("Connection closed by peer"))
    assert not distributed.is_peer_failure(JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory"))
