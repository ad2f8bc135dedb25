"""Two JAX processes (4 CPU devices each, gloo collectives) write one checkpoint together,
in each format: each writes only the shards it holds, process 0 the metadata; the result
equals the model, and each process reads back only its own shards."""

import textwrap

import numpy as np

from jaxmerge import checkpoints
from tests.multiprocess import run_two_processes
from tests.test_checkpoints import bits, make_model

WORKER = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    port, pid, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60)
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxmerge import checkpoints
    from jaxmerge.checkpoints import ParamInfo
    from tests.test_checkpoints import make_model
    model = make_model()
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    infos = {n: ParamInfo(a.shape, a.dtype) for n, a in model.items()}
    for fmt in ("t5x", "safetensors", "orbax"):
        writer = checkpoints.create(f"{out}/{fmt}", fmt, infos, step=3, max_shard_bytes=600)
        for name, array in model.items():
            spec = P("data", "model") if array.ndim == 2 else P("model")
            x = jax.make_array_from_callback(array.shape, NamedSharding(mesh, spec),
                                             lambda index, a=array: a[index])
            assert not x.is_fully_addressable
            writer.write(name, x)
        writer.finalize()
        with checkpoints.open(f"{out}/{fmt}") as reader:  # each process reads its own shards
            for name, array in model.items():
                spec = P("model", "data") if array.ndim == 2 else P("data")
                x = reader.read(name, NamedSharding(mesh, spec))
                for shard in x.addressable_shards:
                    assert shard.data.tobytes() == array[shard.index].tobytes(), (fmt, name)
    print("worker", pid, "done", flush=True)
    """
)


def test_two_processes_write_every_format_together(tmp_path):
    outputs = run_two_processes(WORKER, tmp_path)
    for pid, output in enumerate(outputs):
        assert f"worker {pid} done" in output
    model = make_model()
    for fmt in ("t5x", "safetensors", "orbax"):
        with checkpoints.open(tmp_path / fmt) as reader:
            assert reader.format == fmt
            for name, array in model.items():
                got = reader.read_numpy(name)
                assert got.dtype == array.dtype and bits(got) == bits(array), (fmt, name)
    assert not (tmp_path / "t5x.jaxmerge-tmp").exists()
    assert np.all([p.is_file() for p in (tmp_path / "t5x" / "checkpoint_3").glob("checkpoint")])
