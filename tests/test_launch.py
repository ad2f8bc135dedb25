"""launch/local.sh: N processes of one command joined by jax.distributed on loopback.

Two processes with 4 CPU devices each (gloo collectives) must give what one process with
8 devices gives: the same bytes for a merge, the same parameters (up to the order of the
gradient all-reduce) and the same loss and token counts for training. A killed process
ends the run with a non-zero status within a bound, never a hang.
"""

import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmerge import training
from jaxmerge.models import params as param_utils
from tests.test_merge import make_models, read_all, write_all
from tests.xla_flags import TEST_XLA_FLAGS, xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL = str(REPO / "launch" / "local.sh")
JAXMERGE = [sys.executable, "-m", "jaxmerge"]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAXMERGE_COMPILATION_CACHE="off")
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # each run sets its own device count
    return {**env, **extra}


def _run(argv, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    argv = [str(a) for a in argv]
    kwargs = dict(capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return subprocess.run(argv, timeout=timeout, env=env, **kwargs)


def _local(n: int, *command, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    return _run(["bash", LOCAL, n, *command], _env(**env), timeout)


def _one_process(*command, timeout: float = 240) -> subprocess.CompletedProcess:
    """The same command as one process with 8 CPU devices."""
    env = _env(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(8))
    return _run([*JAXMERGE, *command], env, timeout)


def test_dry_run_prints_each_process_command():
    out = _local(2, "jaxmerge", "eval", "--tasks", "a b", DRY_RUN="1", PORT="4321", XLA_FLAGS="")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == [
        "env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 "
        "JAXMERGE_COORDINATOR_ADDRESS=127.0.0.1:4321 JAXMERGE_NUM_PROCESSES=2 "
        f"JAXMERGE_PROCESS_ID={i} jaxmerge eval --tasks a\\ b"
        for i in (0, 1)
    ]


@pytest.mark.parametrize(
    "n, env, message",
    [("0", {}, "N='0' is not a positive integer"), ("3", {}, "DEVICES=8 is not a multiple")],
)
def test_bad_process_counts_exit_2(n, env, message):
    out = _local(n, "true", **env)
    assert out.returncode == 2
    assert message in out.stderr


def test_first_failure_stops_the_others_and_is_returned():
    script = 'if [ "$JAXMERGE_PROCESS_ID" = 1 ]; then exit 7; fi; exec sleep 60'
    start = time.monotonic()
    out = _local(2, "bash", "-c", script)
    assert out.returncode == 7
    assert time.monotonic() - start < 30  # process 0 was stopped, not waited for
    assert "process 1 of 2" in out.stderr and "exited with status 7" in out.stderr


TRAIN = [
    "train",
    "--gin_file=gin_configs/models/t5_tiny.gin",
    "--gin_file=gin_configs/runs/pretrain.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.BATCH_SIZE=8",
    "--gin.MIXTURE_OR_TASK_NAME='jaxmerge_pretrain'",
]


def test_two_processes_train_as_one(tmp_path):
    """2 processes x 4 devices, the model split over 2 of them, against 1 x 8 data-parallel."""
    mesh = ["--gin_file=gin_configs/mesh/model_parallel.gin", "--gin.NUM_PARTITIONS=2"]
    steps = ["--gin.TRAIN_STEPS=2", f"--gin.MODEL_DIR='{tmp_path}/two'"]
    two = _local(2, *JAXMERGE, *TRAIN, *mesh, *steps)
    assert "(4 data x 2 model)" in two.stdout
    assert two.returncode == 0, two.stderr[-3000:]
    one = _one_process(*TRAIN, "--gin.TRAIN_STEPS=2", f"--gin.MODEL_DIR='{tmp_path}/one'")
    assert one.returncode == 0, one.stderr[-3000:]

    def loss(stdout):
        return [line.split(",")[0] for line in stdout.splitlines() if line.startswith("step 2:")]

    assert loss(two.stdout) == loss(one.stdout) != []
    stats = [json.loads((tmp_path / r / "train_stats.json").read_text()) for r in ("one", "two")]
    assert stats[0]["tokens"] == stats[1]["tokens"]
    want, step, _ = training.restore_checkpoint(tmp_path / "one" / "checkpoint_2")
    got, got_step, _ = training.restore_checkpoint(tmp_path / "two" / "checkpoint_2")
    assert step == got_step == 2
    want, got = param_utils.flatten(want), param_utils.flatten(got)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), atol=1e-6)
    assert not list((tmp_path / "two").glob(".checkpoint_*"))


def test_two_processes_merge_orbax_as_one(tmp_path):
    """The other formats: tests/test_merge_multiprocess.py (the library, both TIES kinds)."""
    fmt = "orbax"
    base, experts = make_models(count=2)
    base_path, expert_paths = write_all(tmp_path, fmt, base, experts)
    merge = ["merge", "--method", "ties", "--base", base_path, "--experts", *expert_paths]
    two = _local(2, *JAXMERGE, *merge, "--output", tmp_path / "two", "--quiet")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _one_process(*merge, "--output", tmp_path / "one", "--quiet")
    assert one.returncode == 0, one.stderr[-3000:]
    got, want = (
        read_all(_only_checkpoint(tmp_path / "two")),
        read_all(_only_checkpoint(tmp_path / "one")),
    )
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    # Orbax restores the per-process OCDBT databases process 0 merged, as its own.
    import orbax.checkpoint as ocp

    state = _only_checkpoint(tmp_path / "two") / "state"
    assert sorted(p.name for p in state.glob("ocdbt.process_*")) == [
        "ocdbt.process_0",
        "ocdbt.process_1",
    ]
    restored = ocp.PyTreeCheckpointer().restore(state)["target"]
    for name in want:
        leaf = functools.reduce(lambda tree, key: tree[key], name.split("/"), restored)
        assert np.asarray(leaf).tobytes() == want[name].tobytes(), name


def _only_checkpoint(out: pathlib.Path) -> pathlib.Path:
    steps = sorted(out.glob("checkpoint_*"))
    return steps[0] if steps else out


def test_a_killed_process_ends_the_run_within_the_bound(tmp_path):
    """No launcher to stop the others: JAX's runtime and the CLI must end process 0."""
    from tests.multiprocess import free_port

    port, workers = free_port(), []
    for pid in (0, 1):
        env = _env(
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=xla_flags(4),
            JAXMERGE_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAXMERGE_NUM_PROCESSES="2",
            JAXMERGE_PROCESS_ID=str(pid),
        )
        command = [*JAXMERGE, "--heartbeat_timeout", "10", *TRAIN, "--gin.TRAIN_STEPS=100000"]
        workers.append(
            subprocess.Popen(
                [*command, f"--gin.MODEL_DIR='{tmp_path}/run'"],
                stdout=subprocess.PIPE if pid else subprocess.DEVNULL,
                stderr=subprocess.PIPE if pid == 0 else subprocess.STDOUT,
                text=True,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        )
    try:
        for line in workers[1].stdout:  # until process 1 trains
            if line.startswith("model:"):
                break
        time.sleep(3)
        workers[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = workers[0].communicate(timeout=90)
        bound = time.monotonic() - killed
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert workers[0].returncode != 0
    assert bound < 60, bound  # heartbeat 10 s; exits at once when a collective fails
    assert "another process of the run stopped" in stderr or "heartbeat" in stderr, stderr[-2000:]


def test_two_processes_evaluate_as_one(tmp_path):
    from tests.test_eval import SMALL, TASKS, _checkpoint

    base, expert, merged = (_checkpoint(tmp_path / n, s) for s, n in enumerate("bem"))
    evaluate = ["eval", "--checkpoint", merged, "--tasks", *TASKS, "--base", base]
    evaluate += ["--expert", f"sentiment={expert}", *SMALL, "--no_cache", "--quiet"]
    two = _local(2, *JAXMERGE, *evaluate, "--output", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _one_process(*evaluate, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    got, want = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("two", "one"))
    assert [m["metrics"] for m in got["models"]] == [m["metrics"] for m in want["models"]]
    assert got["normalized"] == want["normalized"]
    assert (tmp_path / "two" / "metrics.csv").read_text() == (
        tmp_path / "one" / "metrics.csv"
    ).read_text()


@pytest.mark.parametrize("search", ["gradient", pytest.param("cmaes", marks=pytest.mark.slow)])
def test_two_processes_learn_as_one(tmp_path, search):
    import jax

    from jaxmerge.models import t5
    from tests.test_learn_cli import SMALL
    from tests.tiny_t5 import TINY, fine_tune_like

    tx = training.adafactor(training.constant(0.01))
    base = param_utils.unbox(t5.init_params(TINY, jax.random.key(0)))
    paths = []
    for i, name in enumerate(["base", "e1", "e2"]):
        tree = fine_tune_like(base, i)
        paths.append(training.save_checkpoint(tmp_path / name, 4, tree, tx.init(tree)))
    learn = ["learn", "--base", paths[0], "--experts", *paths[1:], "--search", search, *SMALL]
    learn += ["--steps", "2", "--eval_period", "2"] if search == "gradient" else []
    learn += ["--generations", "2", "--popsize", "4"] if search == "cmaes" else []
    # 2 processes x 4 devices, the pool split over 2 of them, against 1 x 8 replicated
    two = _local(2, *JAXMERGE, *learn, "--num_partitions", "2", "--output", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    one = _one_process(*learn, "--output", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    got, want = (
        json.loads((tmp_path / r / "coefficients.json").read_text()) for r in ("two", "one")
    )
    assert got["fitness"] == want["fitness"]
    np.testing.assert_allclose(got["coefficients"]["all"], want["coefficients"]["all"], atol=1e-6)
    merged = [read_all(tmp_path / r / "merged" / "checkpoint_4") for r in ("two", "one")]
    for name in merged[1]:
        np.testing.assert_allclose(
            merged[0][name].astype(np.float32), merged[1][name].astype(np.float32), atol=1e-6
        )


def test_tpu_pod_dry_run_prints_every_gcloud_command():
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "tpu_pod.sh"), "pod", "us-east5-a", "v5litepod-16"]
        + ["--", "jaxmerge", "merge", "--output", "gs://b/m"],
        capture_output=True,
        text=True,
        env=_env(DRY_RUN="1", PROJECT="proj"),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    where = "--zone=us-east5-a --project=proj"
    assert lines[0] == (
        f"gcloud compute tpus tpu-vm create pod {where} --accelerator-type=v5litepod-16 "
        "--version=v2-alpha-tpuv5-lite"
    )
    assert lines[2].startswith("gcloud compute tpus tpu-vm scp /") and "--worker=all" in lines[2]
    install, command = lines[3], lines[4]
    assert "--worker=all" in install and "constraints.txt" in install and "jax\\[tpu\\]" in install
    assert command.startswith(f"gcloud compute tpus tpu-vm ssh pod {where} --worker=all")
    assert "JAXMERGE_DISTRIBUTED=auto" in command
    assert "jaxmerge\\ merge\\ --output\\ gs://b/m" in command
    assert lines[-1].startswith("gcloud compute tpus tpu-vm scp pod:")
    bad = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), "pod"], capture_output=True)
    assert bad.returncode == 2


def test_slurm_dry_runs_print_the_srun_command():
    def dry(**env):
        out = subprocess.run(
            ["bash", str(REPO / "launch" / "slurm.sbatch"), "jaxmerge", "eval", "--x", "a b"],
            capture_output=True,
            text=True,
            env=_env(DRY_RUN="1", **env),
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    per_gpu = dry()
    assert per_gpu.startswith("srun --kill-on-bad-exit=1 --label bash -c ")
    assert per_gpu.endswith("jaxmerge jaxmerge eval --x a\\ b")
    assert "JAXMERGE_" not in per_gpu  # JAX's own SLURM detection
    per_node = dry(PER="node", NODES="4")
    assert "--ntasks-per-node=1" in per_node
    assert "JAXMERGE_COORDINATOR_ADDRESS=node0:12321" in per_node
    assert (
        "JAXMERGE_NUM_PROCESSES=4" in per_node and "JAXMERGE_PROCESS_ID=\\$SLURM_PROCID" in per_node
    )


def test_slurm_per_node_joins_the_processes(tmp_path):
    """A stand-in `srun` starts the tasks here; the script's settings join them for real."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(
        "#!/usr/bin/env bash\n"
        "while [[ $1 == --* ]]; do shift; done\n"
        'for i in 0 1; do SLURM_PROCID=$i "$@" > "$LOGS/task_$i.log" 2>&1 & done\n'
        "wait -n && wait -n\n"
    )
    (fake / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\n")
    for tool in fake.iterdir():
        tool.chmod(0o755)
    (fake / "jaxmerge").symlink_to(pathlib.Path(sys.executable).with_name("jaxmerge"))
    from tests.multiprocess import free_port

    env = _env(
        PER="node",
        PORT=str(free_port()),
        SLURM_JOB_NODELIST="n[1-2]",
        SLURM_JOB_NUM_NODES="2",
        PATH=f"{fake}:{os.environ['PATH']}",
        LOGS=str(tmp_path),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(2),
        PYTHON_ENV=str(tmp_path / "no-venv"),
    )
    # A real checkpoint: both processes finish and leave through JAX's shutdown barrier.
    # (On an input error process 0 exits at once, by design, which may reset process 1
    # while it is still joining, before it prints its line.)
    base_path, _ = write_all(tmp_path, "safetensors", *make_models(count=1))
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm.sbatch"), "jaxmerge", "inspect", str(base_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    logs = [(tmp_path / f"task_{i}.log").read_text() for i in (0, 1)]
    for i, log in enumerate(logs):
        assert f"process {i} of 2 (2 of 4 devices)" in log, (out.stderr, log[-2000:])
    assert out.returncode == 0, (out.stderr, logs)
