"""Checkpoint readers and writers: round trips between every pair of formats, sharded reads on 8
devices, bf16 bits, atomic commit and resume, and the CLI `inspect`."""

import itertools
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmerge import checkpoints
from jaxmerge.checkpoints import ParamInfo, shards, tensorstore_arrays
from jaxmerge.errors import CheckpointError

FORMATS = checkpoints.FORMATS


def make_model(seed=0):
    """A tiny T5-like model: f32, bf16 (with NaN payloads, infinities, subnormals) and f16."""
    rng = np.random.default_rng(seed)
    bf16_bits = rng.integers(0, 2**16, size=(16, 8), dtype=np.uint16)
    return {
        "decoder/layers_0/mlp/wi/kernel": rng.standard_normal((8, 24)).astype(np.float32),
        "encoder/layers_0/attention/query/kernel": bf16_bits.view(ml_dtypes.bfloat16),
        "encoder/encoder_norm/scale": rng.standard_normal((8,)).astype(np.float32),
        "encoder/relpos_bias/rel_embedding": rng.standard_normal((4, 32)).astype(np.float16),
        "token_embedder/embedding": rng.standard_normal((32, 8)).astype(ml_dtypes.bfloat16),
    }


def infos(arrays):
    return {n: ParamInfo(a.shape, a.dtype) for n, a in arrays.items()}


def write(path, fmt, arrays, step=0, **kwargs):
    writer = checkpoints.create(path, fmt, infos(arrays), step=step, **kwargs)
    for name, array in arrays.items():
        writer.write(name, array)
    return writer.finalize()


def bits(a):
    return np.asarray(a).tobytes()


@pytest.mark.parametrize("fmt_a,fmt_b", list(itertools.product(FORMATS, FORMATS)))
def test_round_trip_every_pair_is_bit_exact(tmp_path, fmt_a, fmt_b):
    model = make_model()
    write(tmp_path / "a", fmt_a, model, step=7)
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    with checkpoints.open(tmp_path / "a") as a:
        assert a.format == fmt_a
        assert a.step == (None if fmt_a == "safetensors" else 7)
        assert a.params == infos(model) and set(a.params) == set(model)
        writer = checkpoints.create(tmp_path / "b", fmt_b, a.params, step=a.step or 0)
        for name in a.params:  # through devices, sharded where the shape allows
            spec = P("data") if a.params[name].shape[0] % 4 == 0 else P()
            writer.write(name, a.read(name, NamedSharding(mesh, spec)))
        writer.finalize()
    with checkpoints.open(tmp_path / "b") as b:
        assert b.format == fmt_b
        for name, array in model.items():
            got = b.read_numpy(name)
            assert got.dtype == array.dtype and got.shape == array.shape
            assert bits(got) == bits(array), name


SPECS = [P(), P("data"), P(None, "model"), P("data", "model"), P("model", "data")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_sharded_read_on_8_devices_equals_unsharded_and_reads_only_shards(tmp_path, fmt):
    assert jax.device_count() == 8
    model = make_model()
    write(tmp_path / "m", fmt, model)
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    with checkpoints.open(tmp_path / "m") as reader:
        requested = []
        real = reader._read_slices

        def spy(name, indices):
            for host in real(name, indices):
                requested.append(host.nbytes)
                yield host

        reader._read_slices = spy
        for name, array in model.items():
            whole = reader.read(name)
            assert bits(whole) == bits(array)
            for spec in SPECS:
                if len(spec) > array.ndim:
                    continue
                sharding = NamedSharding(mesh, spec)
                requested.clear()
                x = reader.read(name, sharding)
                assert x.sharding == sharding
                assert bits(x) == bits(array)
                for shard in x.addressable_shards:
                    assert bits(shard.data) == bits(array[shard.index])
                shard_bytes = array.nbytes // (
                    array.size // np.prod(sharding.shard_shape(array.shape))
                )
                # each distinct shard read once, none larger than a shard: no host-side full copy
                assert max(requested) == shard_bytes
                assert len(requested) == len({str(s.index) for s in x.addressable_shards})


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_format_and_parent_of_steps(tmp_path, fmt):
    out = write(tmp_path / "m", fmt, make_model(), step=3)
    assert checkpoints.detect_format(out) == fmt
    assert checkpoints.detect_format(tmp_path / "m") == fmt  # OUT/ resolves to checkpoint_3/
    if fmt != "safetensors":
        assert out == tmp_path / "m" / "checkpoint_3"


@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_half_written_looks_finished_and_resume(tmp_path, fmt):
    model = make_model()
    out = tmp_path / "out"
    writer = checkpoints.create(out, fmt, infos(model), step=5)
    names = list(model)
    for name in names[:2]:
        writer.write(name, model[name])
    assert not out.exists()  # all of it lives in the temporary sibling
    with pytest.raises(CheckpointError):
        checkpoints.open(out)
    writer.close()  # as after a failure: what is written stays journaled, the lock is released
    writer = checkpoints.create(out, fmt, infos(model), step=5, resume=True)
    assert writer.done == set(names[:2])
    for name in names[2:]:
        writer.write(name, model[name])
    writer.finalize()
    assert not out.with_name("out.jaxmerge-tmp").exists()
    with checkpoints.open(out) as reader:
        assert all(bits(reader.read_numpy(n)) == bits(a) for n, a in model.items())
    # no resume: a fresh start; an existing OUT is refused without overwrite
    with pytest.raises(CheckpointError, match="not empty"):
        checkpoints.create(out, fmt, infos(model), step=5)
    writer = checkpoints.create(out, fmt, infos(model), step=5, overwrite=True)
    assert writer.done == set()
    writer.abort()
    assert not out.with_name("out.jaxmerge-tmp").exists() and out.exists()


def test_writer_refuses_wrong_shape_and_undeclared_names(tmp_path):
    model = make_model()
    writer = checkpoints.create(tmp_path / "o", "safetensors", infos(model))
    name = "encoder/encoder_norm/scale"
    with pytest.raises(CheckpointError, match=name):
        writer.write(name, np.zeros((9,), np.float32))
    with pytest.raises(CheckpointError, match="not declared"):
        writer.write("nope", np.zeros((8,), np.float32))
    with pytest.raises(CheckpointError, match="finalize before writing"):
        writer.finalize()
    writer.abort()


def test_safetensors_shards_index_and_reference_files(tmp_path):
    from safetensors.numpy import load_file

    model = make_model()
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "config.json").write_text('{"model_type": "t5"}')
    (ref / "tokenizer.json").write_text("{}")
    (ref / "model.safetensors").write_bytes(b"not copied")
    out = write(tmp_path / "hf", "safetensors", model, reference=ref, max_shard_bytes=600)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in model.values())
    assert set(index["weight_map"]) == set(model)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    assert (out / "config.json").read_text() == '{"model_type": "t5"}'
    assert (out / "tokenizer.json").exists() and not (out / "model.safetensors").exists()
    loaded = {}
    for f in files:  # the safetensors library's own loader accepts every shard
        loaded.update(load_file(out / f))
    assert {n: bits(a) for n, a in loaded.items()} == {n: bits(a) for n, a in model.items()}
    # one file when everything fits, and the library reads it too
    out1 = write(tmp_path / "hf1", "safetensors", model)
    assert sorted(p.name for p in out1.iterdir()) == ["model.safetensors"]
    assert bits(load_file(out1 / "model.safetensors")["token_embedder/embedding"]) == bits(
        model["token_embedder/embedding"]
    )


def test_reader_reads_safetensors_written_by_the_library(tmp_path):
    from safetensors.numpy import save_file

    model = make_model()
    (tmp_path / "hf").mkdir()
    save_file(model, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    with checkpoints.open(tmp_path / "hf") as reader:
        assert reader.params == infos(model)
        assert all(bits(reader.read_numpy(n)) == bits(a) for n, a in model.items())


def run_inspect(*args):
    """`python -m jaxmerge inspect ...` through main(), with only this branch's commands."""
    code = (
        "import sys, jaxmerge.cli.main as m\n"
        "m.COMMANDS = {'inspect': m.COMMANDS['inspect']}\n"
        "sys.exit(m.main(sys.argv[1:]))"
    )
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run(
        [sys.executable, "-c", code, "inspect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_inspect_table_and_json(tmp_path):
    model = make_model()
    write(tmp_path / "m", "t5x", model, step=12)
    result = run_inspect(tmp_path / "m", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "t5x" and info["step"] == 12
    assert info["num_params"] == len(model)
    assert info["total_bytes"] == sum(a.nbytes for a in model.values())
    assert {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in info["params"]} == {
        n: (a.shape, a.dtype.name) for n, a in model.items()
    }
    result = run_inspect(tmp_path / "m")
    assert result.returncode == 0
    assert "format:     t5x" in result.stdout and "token_embedder/embedding" in result.stdout
    assert "(32, 8)  bfloat16" in result.stdout


def test_inspect_bad_input_exit_2_one_line(tmp_path):
    result = run_inspect(tmp_path / "missing")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_through_the_jaxmerge_command(run_cli, tmp_path):
    """The real `python -m jaxmerge inspect` (needs every registered command importable)."""
    pytest.importorskip("jaxmerge.cli.demo", reason="the demo command is not on this branch yet")
    write(tmp_path / "m", "orbax", make_model(), step=2)
    result = run_cli("inspect", "--json", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["step"] == 2
    result = run_cli("inspect", tmp_path / "missing")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 200), min_size=0, max_size=4),
    itemsize=st.sampled_from([1, 2, 4, 8]),
    target=st.integers(1, 1 << 16),
)
def test_chunk_shape_divides_the_shape_and_fits_the_target(shape, itemsize, target):
    chunks = shards.chunk_shape(shape, itemsize, target)
    assert len(chunks) == len(shape)
    assert all(n % c == 0 for n, c in zip(shape, chunks, strict=True))
    # within the target unless every dimension is already down to 1
    assert np.prod(chunks) * itemsize <= max(target, itemsize) or all(c == 1 for c in chunks)


@settings(max_examples=15, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=5),
    dtype=st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16, np.int8]),
    max_shard_bytes=st.integers(1, 200),
)
def test_safetensors_any_shapes_and_shard_sizes_round_trip(shapes, dtype, max_shard_bytes):
    rng = np.random.default_rng(len(shapes))
    model = {
        f"w{i}": rng.integers(
            0, 256, size=int(np.prod(s)) * np.dtype(dtype).itemsize, dtype=np.uint8
        )
        .view(dtype)
        .reshape(s)
        for i, s in enumerate(shapes)
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = write(pathlib.Path(tmp) / "o", "safetensors", model, max_shard_bytes=max_shard_bytes)
        with checkpoints.open(out) as reader:
            assert reader.params == infos(model)
            assert all(bits(reader.read_numpy(n)) == bits(a) for n, a in model.items())


@pytest.mark.parametrize("fmt", ["t5x", "orbax"])
def test_sharded_read_with_a_tiny_window_of_reads_in_flight(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(tensorstore_arrays, "READ_WINDOW_BYTES", 1)  # one shard read at a time
    model = make_model()
    write(tmp_path / "m", fmt, model)
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    with checkpoints.open(tmp_path / "m") as reader:
        for name, array in model.items():
            spec = P("data", "model") if array.ndim == 2 else P("model")
            assert bits(reader.read(name, NamedSharding(mesh, spec))) == bits(array)


def tree_bytes(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["t5x", "safetensors"])
def test_resumed_run_yields_the_same_bytes_as_an_uninterrupted_one(tmp_path, fmt):
    model = make_model()
    write(tmp_path / "fresh", fmt, model, step=5, max_shard_bytes=700)
    writer = checkpoints.create(tmp_path / "out", fmt, infos(model), step=5, max_shard_bytes=700)
    first = list(model)[:3]
    for name in first:
        writer.write(name, model[name])
    writer.close()  # a failed run; then a re-run with resume=True
    writer = checkpoints.create(
        tmp_path / "out", fmt, infos(model), step=5, max_shard_bytes=700, resume=True
    )
    assert writer.done == set(first)
    for name in model:
        if name not in writer.done:
            writer.write(name, model[name])
    writer.finalize()
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "fresh")


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_surface(tmp_path, fmt):
    model = make_model()
    write(tmp_path / "m", fmt, model)
    reader = checkpoints.open(tmp_path / "m", format=fmt)
    name = "token_embedder/embedding"
    x = reader.read(name)
    assert isinstance(x, jax.Array) and len(x.devices()) == 1
    assert x.dtype == model[name].dtype and bits(x) == bits(model[name])
    with pytest.raises(CheckpointError, match="no_such"):
        reader.read("no_such/kernel")
    reader.close()


@pytest.mark.parametrize("fmt", ["t5x", "orbax"])
def test_sharded_writes_chunk_by_shard_like_t5x(tmp_path, fmt):
    """Each shard of a sharded array owns its chunks (T5X chunks each host's write shape)."""
    import tensorstore as ts

    model = {"encoder/layers_0/mlp/wi/kernel": np.arange(64 * 32, dtype=np.float32).reshape(64, 32)}
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    sharded = jax.device_put(
        model["encoder/layers_0/mlp/wi/kernel"], NamedSharding(mesh, P("data", "model"))
    )
    writer = checkpoints.create(tmp_path / "m", fmt, infos(model))
    writer.write("encoder/layers_0/mlp/wi/kernel", sharded)
    out = writer.finalize()
    if fmt == "t5x":
        zarray = json.loads((out / "target.encoder.layers_0.mlp.wi.kernel" / ".zarray").read_text())
        chunks = zarray["chunks"]
        spec = flax_msgpack_spec(out, "encoder/layers_0/mlp/wi/kernel")
        assert spec["metadata"]["chunks"] == chunks
    else:
        spec = {
            "driver": "zarr",
            "kvstore": {
                "driver": "ocdbt",
                "base": f"file://{out / 'state'}/",
                "path": "target.encoder.layers_0.mlp.wi.kernel",
            },
        }
        chunks = list(ts.open(spec, open=True).result().chunk_layout.read_chunk.shape)
    assert chunks == [16, 16]
    with checkpoints.open(out) as reader:
        assert bits(reader.read_numpy("encoder/layers_0/mlp/wi/kernel")) == bits(sharded)


def flax_msgpack_spec(out, name):
    import flax.serialization

    node = flax.serialization.msgpack_restore((out / "checkpoint").read_bytes())["optimizer"][
        "target"
    ]
    for key in name.split("/"):
        node = node[key]
    return node


@pytest.mark.parametrize("spec", [P(None, "model"), P("data", "model"), P("model", None, "data")])
def test_safetensors_writes_any_sharding_shard_by_shard(tmp_path, spec):
    rng = np.random.default_rng(3)
    array = rng.standard_normal((8, 4, 8) if len(spec) == 3 else (8, 6 * 2)).astype(np.float32)
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    sharded = jax.device_put(array, NamedSharding(mesh, spec))
    writer = checkpoints.create(
        tmp_path / "o", "safetensors", {"w": ParamInfo(array.shape, array.dtype)}
    )
    writer.write("w", sharded)
    writer.finalize()
    with checkpoints.open(tmp_path / "o") as reader:
        assert bits(reader.read_numpy("w")) == bits(array)
