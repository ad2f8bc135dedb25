"""Test set-up: 8 CPU devices so that sharding is tested for real on every run, and
XLA told to compile quickly.

The flags must be set before JAX initialises its backend, i.e. before any test
module touches a device; conftest.py is imported first.

Compiling, not running, is most of what the tests' tiny models cost: a test builds
the same programs again (new closures, equal HLO), and each `jaxmerge` it starts
compiles them afresh. So the tests compile at LLVM's lowest optimization level
(tests/xla_flags.py, which every test that starts processes passes on), and this
process keeps a persistent compilation cache, one per test run, shared by the xdist
workers. tests/test_evaluator.py, compile-heavy, took 86 s at the default level with
no cache and 51 s with both.
"""

import os
import shutil
import tempfile

from tests.xla_flags import TEST_XLA_FLAGS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
for _flag in (TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# The controller makes the run's cache; the xdist workers it starts inherit the variable.
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["JAXMERGE_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jaxmerge-xla-")

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_threefry_partitionable", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAXMERGE_TEST_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


import fcntl  # noqa: E402
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


# Tests that join JAX processes over loopback each pick a free port and then bind it; two
# such tests at once (one per pytest-xdist worker) could race for the same port, and a
# process that reached the other test's coordinator would be reset. So under xdist they
# take turns, on a lock file shared by the workers. (`--dist loadgroup` would say this with
# marks, but pytest-xdist 3.8 renames tests through `_nodeid`, which pytest 9 ignores.)
JOINS_JAX_PROCESSES = frozenset(
    {
        "test_checkpoints_multiprocess.py",
        "test_launch.py",
        "test_merge_multiprocess.py",
    }
)


@pytest.fixture(autouse=True)
def _one_test_joining_processes_at_a_time(request, tmp_path_factory):
    if request.path.name not in JOINS_JAX_PROCESSES or "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    lock = tmp_path_factory.getbasetemp().parent / "joins_jax_processes.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist)
        shutil.rmtree(os.environ["JAXMERGE_TEST_COMPILATION_CACHE"], ignore_errors=True)


# The longest files, longest first (measured: `make test` prints the slowest tests). Under
# `--dist loadfile` each file runs whole on one worker in collection order, so a long file
# collected last (test_study.py is) leaves the other worker idle at the end; starting the
# longest first shortens the run without dropping a test.
LONGEST_FILES_FIRST = ("test_study.py", "test_model_set.py", "test_launch.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable for the rest
