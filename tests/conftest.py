"""Test set-up: 8 CPU devices so that sharding is tested for real on every run.

The flag must be set before JAX initialises its backend, i.e. before any test
module touches a device; conftest.py is imported first.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_threefry_partitionable", True)


import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def run_cli():
    """Runs `python -m jaxmerge ARGS...` from this checkout; returns CompletedProcess.

    The child imports this checkout's package (PYTHONPATH), sees 8 CPU devices like
    the tests, and is killed after `timeout` seconds so a hang fails the test.
    """

    def run(*args: str, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run(
            [sys.executable, "-m", "jaxmerge", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )

    return run


# Tests that join JAX processes over loopback each pick a free port and then bind it;
# two such tests at once (one per pytest-xdist worker) can race for the same port, and
# a process that reaches the other test's coordinator is reset. `make test` runs with
# `--dist loadgroup`: these files share one group (one worker, one at a time) and every
# other file is a group of its own, which is `--dist loadfile` for the rest.
JOINS_JAX_PROCESSES = frozenset(
    {
        "test_checkpoints_multiprocess.py",
        "test_launch.py",
        "test_merge_multiprocess.py",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        group = "joins_jax_processes" if name in JOINS_JAX_PROCESSES else name
        item.add_marker(pytest.mark.xdist_group(group))
