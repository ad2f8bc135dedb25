"""XLA_FLAGS for the tests and for every process they start (see conftest.py).

Compiling, not running, is most of what the tests' tiny models cost, so they ask
XLA:CPU for LLVM's lowest optimization level. The HLO, and so what a program
computes, is the same at every level: the merges' byte-equality tests pass with one
side compiled at the default level.
"""

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(device_count: int) -> str:
    """XLA_FLAGS for a process the tests start: TEST_XLA_FLAGS and `device_count` CPUs."""
    return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={device_count}"
