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
