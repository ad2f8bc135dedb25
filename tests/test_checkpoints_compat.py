"""What other tools accept: our outputs restored with Orbax's and flax's own APIs the way T5X
restores them, and our readers on checkpoints written by Orbax, flax and the HF library."""

import json

import flax.serialization
import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmerge import checkpoints
from jaxmerge.checkpoints import ParamInfo

MODEL = {
    "decoder/logits_dense/kernel": np.arange(64, dtype=np.float32).reshape(8, 8) / 7,
    "encoder/layers_0/mlp/wi/kernel": (np.arange(128, dtype=np.float32) - 60)
    .reshape(8, 16)
    .astype(ml_dtypes.bfloat16),
    "encoder/encoder_norm/scale": np.linspace(-1, 1, 8, dtype=np.float32),
}


def nest(flat):
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def flat(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def ts_specs(tree, prefix=""):
    """(name, spec) for the TensorStore-spec leaves of a T5X msgpack tree."""
    for key, value in tree.items():
        if {"driver", "kvstore", "metadata"} <= set(value):
            yield f"{prefix}{key}", value
        else:
            yield from ts_specs(value, f"{prefix}{key}/")


def write(path, fmt, step=11):
    writer = checkpoints.create(
        path, fmt, {n: ParamInfo(a.shape, a.dtype) for n, a in MODEL.items()}, step=step
    )
    for name, array in MODEL.items():
        writer.write(name, array)
    return writer.finalize()


def bits(a):
    return np.asarray(a).tobytes()


def test_t5x_orbax_output_restores_like_t5x_does(tmp_path):
    """T5X's OrbaxCheckpointManagerInterface: a CheckpointManager with step_prefix 'checkpoint'
    and item 'state' handled by PyTreeCheckpointHandler(use_ocdbt=True), restored into the
    train-state dict with ArrayRestoreArgs (mesh shardings)."""
    out = write(tmp_path / "out", "orbax", step=11)
    assert out == tmp_path / "out" / "checkpoint_11"
    state_dir = ocp.utils.get_save_directory(
        11, tmp_path / "out", name="state", step_prefix="checkpoint"
    )
    assert state_dir == out / "state"
    manager = ocp.CheckpointManager(
        tmp_path / "out",
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True)},
        options=ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=False),
    )
    assert manager.all_steps() == [11]
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    shardings = {
        n: NamedSharding(mesh, P("data", None) if a.ndim == 2 else P()) for n, a in MODEL.items()
    }
    target = {
        "target": nest(
            {
                n: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings[n])
                for n, a in MODEL.items()
            }
        ),
        "state": {"step": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(mesh, P()))},
    }
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    restored = manager.restore(
        11,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
        ),
    )["state"]
    manager.close()
    assert int(restored["state"]["step"]) == 11
    for name, array in flat(restored["target"]):
        assert isinstance(array, jax.Array) and array.sharding == shardings[name]
        assert bits(array) == bits(MODEL[name])
    meta = json.loads((out / "_CHECKPOINT_METADATA").read_text())
    assert "state" in meta["item_handlers"]


def test_plain_orbax_checkpointers_restore_our_state_dir(tmp_path):
    out = write(tmp_path / "out", "orbax")
    for checkpointer in (ocp.StandardCheckpointer(), ocp.PyTreeCheckpointer()):
        restored = checkpointer.restore(out / "state")
        assert int(restored["state"]["step"]) == 11
        assert {n: bits(a) for n, a in flat(restored["target"])} == {
            n: bits(a) for n, a in MODEL.items()
        }
        metadata = checkpointer.metadata(out / "state")
        assert metadata is not None


def _orbax_tree():
    return {
        "target": nest(MODEL),
        "state": {"step": np.int32(9), "param_states": {"v": np.ones(3, np.float32)}},
    }


@pytest.mark.parametrize("use_zarr3", [False, True])
def test_reader_reads_t5x_checkpoint_written_by_orbax(tmp_path, use_zarr3):
    manager = ocp.CheckpointManager(
        tmp_path / "t5x",
        item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=use_zarr3)},
        options=ocp.CheckpointManagerOptions(step_prefix="checkpoint"),
    )
    manager.save(9, args=ocp.args.Composite(state=ocp.args.PyTreeSave(_orbax_tree())))
    manager.wait_until_finished()
    manager.close()
    with checkpoints.open(tmp_path / "t5x") as reader:  # OUT/ resolves to checkpoint_9/
        assert reader.format == "orbax" and reader.step == 9
        assert reader.params == {n: ParamInfo(a.shape, a.dtype) for n, a in MODEL.items()}
        mesh = jax.make_mesh((8,), ("data",))
        for name, array in MODEL.items():
            assert bits(reader.read(name, NamedSharding(mesh, P("data")))) == bits(array)


def test_reader_reads_plain_and_maxtext_style_orbax(tmp_path):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "plain", nest(MODEL))
    checkpointer.wait_until_finished()
    with checkpoints.open(tmp_path / "plain") as reader:
        assert reader.format == "orbax" and reader.step is None
        assert {n: bits(reader.read_numpy(n)) for n in reader.params} == {
            n: bits(a) for n, a in MODEL.items()
        }
    # MaxText: CheckpointManager, numeric step dirs, item 'items', params under 'params'
    manager = ocp.CheckpointManager(tmp_path / "mt", item_names=("items",))
    tree = {
        "params": nest(MODEL),
        "opt_state": {"mu": np.zeros(4, np.float32)},
        "step": np.int32(5),
    }
    manager.save(5, args=ocp.args.Composite(items=ocp.args.PyTreeSave(tree)))
    manager.wait_until_finished()
    manager.close()
    with checkpoints.open(tmp_path / "mt") as reader:
        assert reader.step == 5 and set(reader.params) == set(MODEL)
    with checkpoints.open(tmp_path / "mt" / "5") as reader:
        assert bits(reader.read_numpy("encoder/encoder_norm/scale")) == bits(
            MODEL["encoder/encoder_norm/scale"]
        )


def test_reader_reads_non_ocdbt_orbax(tmp_path):
    ocp.PyTreeCheckpointer(use_ocdbt=False).save(tmp_path / "noocdbt", _orbax_tree())
    with checkpoints.open(tmp_path / "noocdbt") as reader:
        assert reader.step == 9
        assert {n: bits(reader.read_numpy(n)) for n in reader.params} == {
            n: bits(a) for n, a in MODEL.items()
        }


def test_t5x_legacy_output_is_what_t5x_restores(tmp_path):
    """The msgpack as T5X's Checkpointer.restore reads it (flax msgpack_restore), each ts spec
    opened the way t5x.checkpoints._read_ts does: chunks/compressor dropped, path joined."""
    out = write(tmp_path / "out", "t5x", step=11)
    contents = flax.serialization.msgpack_restore((out / "checkpoint").read_bytes())
    assert set(contents) == {"version", "optimizer"} and contents["version"] == 3
    assert set(contents["optimizer"]) == {"target", "state"}
    step = contents["optimizer"]["state"]["step"]
    assert (
        isinstance(step, np.ndarray) and step.dtype == np.int32 and step.shape == () and step == 11
    )
    specs = dict(ts_specs(contents["optimizer"]["target"]))
    assert set(specs) == set(MODEL)
    for name, spec in specs.items():
        assert spec["driver"] == "zarr" and spec["kvstore"]["driver"] == "file"
        relative = spec["kvstore"]["path"]
        assert relative.rstrip("/") == "target." + name.replace("/", ".")
        assert spec["metadata"]["compressor"]["id"] == "gzip"
        assert spec["dtype"] == MODEL[name].dtype.name
        zarray = json.loads((out / relative / ".zarray").read_text())
        assert zarray["compressor"]["id"] == "gzip"
        assert zarray["dtype"] == ("bfloat16" if MODEL[name].dtype == ml_dtypes.bfloat16 else "<f4")
        del spec["metadata"]["chunks"], spec["metadata"]["compressor"]  # as _read_ts does
        spec["kvstore"]["path"] = str(out / relative)
        array = ts.open(spec, open=True).result().read().result()
        assert bits(array) == bits(MODEL[name])


def test_reader_reads_flax_msgpack_with_inline_and_chunked_arrays(tmp_path, monkeypatch):
    """T5X writes unpartitioned leaves inline (flax ExtType arrays), and flax splits big inline
    arrays into '__msgpack_chunked_array__' dicts; both must read back bit-exactly."""
    ckpt = tmp_path / "checkpoint_4"
    ckpt.mkdir()
    store = ts.open(
        {
            "driver": "zarr",
            "kvstore": {"driver": "file", "path": str(ckpt / "target.big")},
            "metadata": {
                "shape": [8, 8],
                "chunks": [4, 8],
                "dtype": "<f4",
                "compressor": {"id": "gzip"},
            },
        },
        create=True,
    ).result()
    big = np.arange(64, dtype=np.float32).reshape(8, 8)
    store.write(big).result()
    spec = {
        "driver": "zarr",
        "dtype": "float32",
        "kvstore": {"driver": "file", "path": "target.big"},
        "metadata": {"shape": [8, 8], "chunks": [4, 8], "compressor": {"id": "gzip"}},
    }
    inline_bf16 = np.linspace(-2, 2, 6).astype(ml_dtypes.bfloat16)
    chunked = np.arange(40, dtype=np.float32).reshape(5, 8)
    monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 64)  # 16 floats per chunk
    state = {
        "version": 3,
        "optimizer": {
            "target": {"big": spec, "small": {"bias": inline_bf16, "table": chunked}},
            "state": {"step": np.array(4, np.int32), "param_states": {"big": {"v": np.zeros(3)}}},
        },
    }
    (ckpt / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(state))
    with checkpoints.open(ckpt) as reader:
        assert reader.format == "t5x" and reader.step == 4
        assert set(reader.params) == {"big", "small/bias", "small/table"}
        assert bits(reader.read_numpy("big")) == bits(big)
        assert bits(reader.read_numpy("small/bias")) == bits(inline_bf16)
        assert bits(reader.read_numpy("small/table")) == bits(chunked)
        mesh = jax.make_mesh((8,), ("data",))
        assert bits(reader.read("big", NamedSharding(mesh, P("data")))) == bits(big)


def test_transformers_loads_safetensors_output(tmp_path):
    """A real `from_pretrained` when transformers and torch are installed (not a dependency)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    reference = tmp_path / "ref"
    model.save_pretrained(reference)
    with checkpoints.open(reference) as reader:
        writer = checkpoints.create(
            tmp_path / "out",
            "safetensors",
            reader.params,
            reference=reference,
            max_shard_bytes=2000,
        )
        for name in reader.params:
            writer.write(name, reader.read_numpy(name))
        writer.finalize()
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out")
    for name, tensor in model.state_dict().items():
        assert (loaded.state_dict()[name] == tensor).all(), name


def test_reader_reads_orbax_v1_save(tmp_path):
    from orbax.checkpoint import v1 as ocp_v1

    tree = {"params": nest(MODEL), "step": np.array(3, np.int32)}
    ocp_v1.save(tmp_path / "ck", tree)
    with checkpoints.open(tmp_path / "ck") as reader:
        assert reader.format == "orbax" and reader.step == 3
        assert {n: bits(reader.read_numpy(n)) for n in reader.params} == {
            n: bits(a) for n, a in MODEL.items()
        }
