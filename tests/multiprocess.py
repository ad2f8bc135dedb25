"""Runs a Python script as two JAX processes joined over loopback, for multi-host tests.

Each worker gets argv [port, process id, *args]; the script calls
`jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)`.
Bounded in time: on a hang both are killed and the test fails.
"""

import os
import socket
import subprocess
import sys

import pytest

from tests.xla_flags import TEST_XLA_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(script: str, *args: str, timeout: float = 240) -> list[str]:
    """Each worker's combined output; fails the test unless both exit 0."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # the script adds its own device count
    port = str(free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, port, str(pid), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        for pid in (0, 1)
    ]
    outputs = []
    for worker in workers:
        try:
            outputs.append(worker.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            pytest.fail("two JAX processes hung")
    for pid, (worker, output) in enumerate(zip(workers, outputs, strict=True)):
        assert worker.returncode == 0, f"process {pid}:\n{output[-3000:]}"
    return outputs
