"""Two JAX processes (4 CPU devices each, gloo collectives) run one merge together.

Each process reads and writes only the shards it holds; the global TIES thresholds come
from histograms all-reduced across both; process 0 keeps the journal and commits. The
output is the same bytes as one process with 8 devices gives (DESIGN.md: identical on 1
device, 8 devices or several processes).
"""

import textwrap

import pytest

from jaxmerge.merging import MergeConfig, merge_checkpoints
from tests.multiprocess import run_two_processes
from tests.test_merge import make_models, read_all, write_all

WORKER = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, base, out, method = sys.argv[1:6]
    experts = sys.argv[6:]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(pid),
                               initialization_timeout=60)
    assert jax.device_count() == 8 and jax.local_device_count() == 4
    from jaxmerge.merging import MergeConfig, merge_checkpoints
    config = MergeConfig(method=method, base=base, experts=experts, output=out, seed=7)
    merge_checkpoints(config, quiet=True, log=lambda *_: None)
    print("worker", pid, "done", flush=True)
    """
)


def _merge_in_two_processes(base, experts, out, method) -> None:
    outputs = run_two_processes(WORKER, base, out, method, *experts)
    for pid, output in enumerate(outputs):
        assert f"worker {pid} done" in output, output[-3000:]


@pytest.mark.parametrize("method", ["ties", "dare_ties"])  # global histograms; random masks
@pytest.mark.parametrize("fmt", ["safetensors", "t5x"])  # orbax: tests/test_launch.py
def test_two_processes_give_the_same_bytes_as_one(tmp_path, fmt, method):
    base, experts = make_models(count=2)
    base_path, expert_paths = write_all(tmp_path, fmt, base, experts)
    _merge_in_two_processes(base_path, expert_paths, tmp_path / "two", method)
    one = merge_checkpoints(
        MergeConfig(
            method=method,
            base=str(base_path),
            experts=expert_paths,
            output=str(tmp_path / "one"),
            seed=7,
        ),
        quiet=True,
        log=lambda *_: None,
    )
    two = tmp_path / "two" / one.relative_to(tmp_path / "one")
    got, want = read_all(two), read_all(one)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    assert not (tmp_path / "two.jaxmerge-tmp").exists()
    assert not (tmp_path / "two.jaxmerge-lock").exists()
