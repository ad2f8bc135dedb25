"""Bounded fuzzing of the three readers: byte mutations of small valid checkpoints.

Each example damages one or two files of a valid checkpoint (flip, overwrite, insert, delete
or truncate bytes; rewrite a length field or a JSON number as something huge; remove the
file), then opens it and reads every parameter. The only outcomes allowed: a CheckpointError
(InputError), or arrays of the shape and dtype the reader declared. Never another exception,
a hang (each example is bounded; faulthandler ends a stuck run with its traceback) or a huge
allocation (huge claims are refused before any buffer is made; tracemalloc watches numpy).

Derandomized, so CI runs the same examples every time.
"""

import dataclasses
import faulthandler
import pathlib
import struct
import tempfile
import time
import tracemalloc

import jax
import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmerge import checkpoints
from jaxmerge.checkpoints import ParamInfo, t5x
from jaxmerge.errors import InputError
from tests.checkpoint_mutations import mutate, mutation

MODEL = {
    "decoder/logits/kernel": np.arange(64, dtype=np.float32).reshape(8, 8) / 7,
    "encoder/norm/scale": np.linspace(-2, 2, 8).astype(ml_dtypes.bfloat16),
    "encoder/relpos/embedding": np.arange(24, dtype=np.float16).reshape(2, 3, 4),
    "encoder/count": np.arange(8, dtype=np.int32),
}
EXAMPLE_SECONDS = 10  # one open + read of a tiny checkpoint; more means a hang
HANG_SECONDS = 60  # faulthandler ends the run, printing where it was stuck
ALLOCATION_LIMIT = 64 << 20  # bytes numpy may hold at once while reading a tiny checkpoint


def write_variant(root: pathlib.Path, fmt: str, **kwargs) -> pathlib.Path:
    """A valid checkpoint; the t5x kernel written from 8 devices, so as 8 zarr chunks."""
    writer = checkpoints.create(
        root, fmt, {n: ParamInfo(a.shape, a.dtype) for n, a in MODEL.items()}, step=2, **kwargs
    )
    mesh = jax.make_mesh((8,), ("data",))
    for name, array in MODEL.items():
        if fmt == "t5x" and array.ndim == 2:
            array = jax.device_put(array, NamedSharding(mesh, P("data")))
        writer.write(name, array)
    return writer.finalize()


@dataclasses.dataclass(frozen=True)
class Variant:
    """A valid checkpoint as bytes: (path relative to `root`, contents) for every file."""

    root: str  # the directory to open, relative to the written tree
    files: tuple[tuple[str, bytes], ...]


def capture(fmt: str, **kwargs) -> Variant:
    with tempfile.TemporaryDirectory() as tmp:
        tree = pathlib.Path(tmp) / "ckpt"
        opened = write_variant(tree, fmt, **kwargs)
        files = tuple(
            (str(p.relative_to(tree)), p.read_bytes())
            for p in sorted(tree.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "config.gin")
        )
        return Variant(str(opened.relative_to(tree)), files)


def t5x_inline() -> Variant:
    """A T5X msgpack holding the parameters themselves (flax's inline ExtType arrays)."""
    tree: dict = {}
    for name, array in MODEL.items():
        *parents, leaf = name.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(array)
    state = {"target": tree, "state": {"step": np.asarray(2, np.int32)}}
    data = msgpack.packb({"version": 3, "optimizer": state}, default=t5x._ext_default)
    return Variant("checkpoint_2", (("checkpoint_2/checkpoint", data),))


@pytest.fixture(scope="module")
def variants():
    return {
        "safetensors": [capture("safetensors"), capture("safetensors", max_shard_bytes=200)],
        "t5x": [capture("t5x"), t5x_inline()],
        "orbax": [capture("orbax")],
    }


def read_everything(path: pathlib.Path) -> None:
    """Opens `path` and reads every parameter whole and sharded over 8 devices, checking that
    what is read is what the reader declared."""
    mesh = jax.make_mesh((8,), ("data",))
    with checkpoints.open(path) as reader:
        for name, info in reader.params.items():
            array = reader.read_numpy(name)
            assert array.shape == info.shape and array.dtype == info.dtype, name
            spec = P("data") if info.shape and info.shape[0] % 8 == 0 else P()
            placed = reader.read(name, NamedSharding(mesh, spec))
            assert placed.shape == info.shape and placed.dtype == info.dtype, name


def read_or_refuse(path: pathlib.Path) -> bool:
    """read_everything (True), or one CheckpointError/InputError line (False); nothing else
    may escape."""
    try:
        read_everything(path)
    except InputError as e:
        assert "\n" not in str(e), str(e)
        return False
    return True


def fuzz(variants: list[Variant], max_examples: int) -> tuple[int, int]:
    """Runs the bounded fuzz of one reader: (examples run, how many of them read fine)."""
    count = read = 0

    @settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,  # bounded below, without flaky timing on shared CI cores
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.integers(0, len(variants) - 1), st.lists(mutation, min_size=1, max_size=3))
    def one_example(which, ops):
        nonlocal count, read
        count += 1
        variant = variants[which]
        with tempfile.TemporaryDirectory() as tmp:
            tree = pathlib.Path(tmp)
            for name, data in mutate(dict(variant.files), ops).items():
                if data is not None:
                    (tree / name).parent.mkdir(parents=True, exist_ok=True)
                    (tree / name).write_bytes(data)
            start = time.monotonic()
            faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
            tracemalloc.start()
            try:
                read += read_or_refuse(tree / variant.root)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                faulthandler.cancel_dump_traceback_later()
            assert time.monotonic() - start < EXAMPLE_SECONDS, ops
            assert peak < ALLOCATION_LIMIT, (peak, ops)

    one_example()
    return count, read


@pytest.mark.parametrize(
    ("fmt", "max_examples"), [("safetensors", 500), ("t5x", 400), ("orbax", 400)]
)
def test_reader_survives_byte_mutations(variants, fmt, max_examples):
    count, read = fuzz(variants[fmt], max_examples)
    print(f"{fmt}: {count} fuzz examples, {read} read in full, {count - read} refused")
    assert count >= max_examples


def _safetensors_file(path: pathlib.Path, raw: bytes) -> None:
    path.mkdir()
    (path / "model.safetensors").write_bytes(raw)


def _header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


HUGE_CLAIMS = {
    "header length 2^60": struct.pack("<Q", 2**60) + b"{}",
    "1 TB tensor": _header(
        b'{"w":{"dtype":"F32","shape":[262144,1048576],"data_offsets":[0,1099511627776]}}'
    ),
    "2^62 x 0 tensor": _header(
        b'{"w":{"dtype":"F32","shape":[4611686018427387904,0],"data_offsets":[0,0]}}'
    ),
}


@pytest.mark.parametrize("case", sorted(HUGE_CLAIMS))
def test_huge_safetensors_claims_are_refused_before_allocating(tmp_path, case):
    _safetensors_file(tmp_path / "m", HUGE_CLAIMS[case])
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            read_everything(tmp_path / "m")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_LIMIT


def test_huge_msgpack_and_zarr_claims_are_refused_before_allocating(tmp_path):
    import json

    import msgpack

    inline = msgpack.ExtType(1, msgpack.packb(([2**40, 2**40], "float32", b"")))
    target = {"version": 3, "optimizer": {"target": {"w": inline}, "state": {}}}
    (tmp_path / "inline").mkdir()
    (tmp_path / "inline" / "checkpoint").write_bytes(msgpack.packb(target))
    with pytest.raises(InputError, match="implausibly large"):
        read_everything(tmp_path / "inline")
    # a zarr array whose chunks claim 4 TB: TensorStore would abort the process reading it
    out = write_variant(tmp_path / "zarr", "t5x")
    zarray = out / "target.encoder.norm.scale" / ".zarray"
    meta = json.loads(zarray.read_text())
    meta["chunks"] = [2**41]
    zarray.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="chunks"):
        read_everything(out)


def _inline(shape, dtype, data) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb((shape, dtype, data)))


# Crashes the fuzzing found (each was a TypeError/ValueError/AttributeError escaping a reader).
T5X_MSGPACK_DAMAGE = {
    "negative shape": {"w": _inline([-1, -4], "float32", bytes(16))},
    "shape of strings": {"w": _inline(["a"], "float32", bytes(4))},
    "data not bytes": {"w": _inline([1], "float32", "abcd")},
    "step of two": {
        "w": _inline([1], "float32", bytes(4)),
        "step": _inline([2], "int32", bytes(8)),
    },
    "chunked short": {
        "w": {
            "__msgpack_chunked_array__": True,
            "shape": {"0": 5},
            "chunks": {"0": _inline([4], "float32", bytes(16))},
        }
    },
    "chunked empty": {"w": {"__msgpack_chunked_array__": True, "shape": {}, "chunks": {}}},
}  # fmt: skip
ORBAX_METADATA_DAMAGE = {
    "tree key not a tuple": {"tree_metadata": {"5": {}}},
    "value type a list": {
        "tree_metadata": {
            "x": {
                "key_metadata": [{"key": "target"}, {"key": "w"}],
                "value_metadata": {"value_type": ["np.ndarray"]},
            }
        }
    },
}


@pytest.mark.parametrize("case", sorted(T5X_MSGPACK_DAMAGE))
def test_t5x_msgpack_damage_found_by_fuzzing(tmp_path, case):
    target = dict(T5X_MSGPACK_DAMAGE[case])
    state = {"step": target.pop("step")} if "step" in target else {}
    (tmp_path / "checkpoint").write_bytes(
        msgpack.packb({"version": 3, "optimizer": {"target": target, "state": state}})
    )
    with pytest.raises(InputError):
        read_everything(tmp_path)


@pytest.mark.parametrize("case", sorted(ORBAX_METADATA_DAMAGE))
def test_orbax_metadata_damage_found_by_fuzzing(tmp_path, case):
    import json

    out = write_variant(tmp_path / "m", "orbax")
    (out / "state" / "_METADATA").write_text(json.dumps(ORBAX_METADATA_DAMAGE[case]))
    read_or_refuse(out)  # refused, or (a list is no array type) a tree without parameters
