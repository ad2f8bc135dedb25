"""The fast paths of the merge engine keep its contracts.

Mapped safetensors reads never change the input files (the kernel may write over a donated
input: the mapping is private); write-behind raises a failed write; the NaN/Inf bit check
agrees with numpy for every float dtype; the command re-executes itself once with the
huge-page malloc tunable.
"""

import hashlib
import os
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxmerge import checkpoints
from jaxmerge.checkpoints import ParamInfo
from jaxmerge.cli import main
from jaxmerge.merging import executor, nonfinite, plan
from jaxmerge.merging.config import MergeConfig

BF16 = np.dtype(ml_dtypes.bfloat16)


def _write(path, arrays):
    params = {n: ParamInfo(a.shape, a.dtype) for n, a in arrays.items()}
    writer = checkpoints.create(path, "safetensors", params)
    for name, array in arrays.items():
        writer.write(name, array)
    return writer.finalize()


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float32)], ids=str)
def test_mapped_inputs_are_never_written(tmp_path, dtype):
    rng = np.random.default_rng(0)
    shapes = {"w": (64, 48), "b": (48,), "odd": (7, 3)}
    base = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}
    paths = [_write(tmp_path / "base", base)]
    for i in range(2):
        expert = {n: (a.astype(np.float32) + 0.1 * (i + 1)).astype(dtype) for n, a in base.items()}
        paths.append(_write(tmp_path / f"e{i}", expert))
    before = [_digest(p) for p in paths]
    config = MergeConfig(
        method="task_arithmetic",
        base=str(paths[0]),
        experts=[str(p) for p in paths[1:]],
        output=str(tmp_path / "out"),
    )
    out = executor.merge_checkpoints(config, quiet=True, log=lambda *_: None)
    assert [_digest(p) for p in paths] == before
    merged = checkpoints.open(out).read_numpy("w").astype(np.float32)
    expected = base["w"].astype(np.float32) + 0.1 + 0.2
    np.testing.assert_allclose(merged, expected, rtol=1e-2, atol=1e-2)


def test_whole_tensor_reads_alias_the_mapping(tmp_path):
    """64-byte-aligned data: jax.device_put on CPU takes the mapped bytes without a copy."""
    path = _write(tmp_path / "m", {"a": np.ones((32, 32), np.float32), "b": np.ones(5, BF16)})
    reader = checkpoints.open(path)
    host = reader._mapped("a")
    assert host.ctypes.data % 64 == 0
    assert np.array_equal(np.asarray(reader.read("a")), np.ones((32, 32), np.float32))


def test_write_behind_raises_a_failed_write_and_writes_in_order():
    written = []

    def write(name, array):
        if name == "bad":
            raise OSError(28, "No space left on device")
        written.append(name)

    with executor.WriteBehind(write, limit=1 << 20) as out:
        for name in ["a", "b", "c"]:
            out.write(name, np.zeros(4, np.float32))
    assert written == ["a", "b", "c"]
    with (
        pytest.raises(OSError, match="No space"),
        executor.WriteBehind(write, limit=1 << 20) as out,
    ):
        for name in ["d", "bad", "e", "f", "g"]:
            out.write(name, np.zeros(4, np.float32))
            if name == "bad":
                time.sleep(0.2)  # let it fail before the next write
    assert written[:4] == ["a", "b", "c", "d"] and "g" not in written


@pytest.mark.parametrize(
    "dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn]
)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, None])
@pytest.mark.parametrize("size", [1, 1000, (1 << 18) + 7])
def test_nonfinite_bit_check_matches_numpy(dtype, value, size):
    rng = np.random.default_rng(size)
    data = (rng.standard_normal(size) * 100).astype(dtype)
    if value is not None:
        data[rng.integers(size)] = value
    expected = not np.isfinite(data.astype(np.float64)).all()
    assert nonfinite.has_nonfinite(data) == expected
    assert nonfinite.has_nonfinite(jax.device_put(data, jax.devices()[0])) == expected


def test_nonfinite_check_on_an_eight_way_sharded_array():
    mesh = jax.make_mesh((8,), ("data",))
    data = np.zeros((64, 4), np.float32)
    data[63, 3] = np.inf
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    assert nonfinite.has_nonfinite(jax.device_put(data, sharding))
    assert not nonfinite.has_nonfinite(jax.device_put(np.zeros((64, 4), np.float32), sharding))


def test_relaunch_sets_the_malloc_tunable_once(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    monkeypatch.setattr(main.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.delenv("JAXMERGE_MALLOC", raising=False)
    main.relaunch_with_huge_pages()
    if calls:  # transparent huge pages are not disabled on this machine
        argv, env = calls[0]
        assert argv[1:3] == ["-m", "jaxmerge"]
        assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + main.MALLOC_TUNABLE
    calls.clear()
    monkeypatch.setenv("GLIBC_TUNABLES", main.MALLOC_TUNABLE)
    main.relaunch_with_huge_pages()
    monkeypatch.setenv("GLIBC_TUNABLES", "")
    monkeypatch.setenv("JAXMERGE_MALLOC", "default")
    main.relaunch_with_huge_pages()
    assert calls == []


def test_relaunch_comes_before_jax_is_imported():
    """The command re-executes itself before importing anything heavy, so that no library
    is imported twice (JAX alone: 1-2 s of every command on a 2-core VM)."""
    probe = "import sys, jaxmerge.cli.main; print(sorted({'jax', 'tensorflow'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_default_budget_fits_host_and_device_memory(monkeypatch):
    monkeypatch.setattr(plan.checkpoints, "free_memory", lambda: 64 << 30)
    assert plan.default_budget([_Device(None)]) == plan.DEFAULT_BUDGET  # CPU: no stats
    gpu = _Device({"bytes_limit": 3 << 30, "bytes_in_use": 1 << 30})
    assert plan.default_budget([gpu]) == 1 << 30
    monkeypatch.setattr(plan.checkpoints, "free_memory", lambda: 1 << 30)
    assert plan.default_budget([_Device(None)]) == 1 << 29
