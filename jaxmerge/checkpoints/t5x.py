"""T5X legacy checkpoints: `checkpoint_<N>/checkpoint` (msgpack) + one zarr array per parameter.

What T5X writes (t5x/checkpoints.py, `Checkpointer.save`, VERSION = 3):
- `checkpoint`: flax msgpack of `{'version': 3, 'optimizer': {'target': params, 'state':
  {'step': int32[], 'param_states': ...}}}`. A partitioned leaf is replaced by its TensorStore
  spec as a dict, `{'driver': 'zarr', 'dtype': 'float32' | 'bfloat16', 'kvstore': {'driver':
  'file', 'path': 'target.encoder.layers_0.attention.query.kernel'}, 'metadata': {'shape',
  'chunks', 'compressor': {'id': 'gzip'}}}`, with the path relative to the checkpoint dir;
  other leaves (the step, small arrays) are inline msgpack ExtType(1) arrays
  `(shape, dtype name, bytes)`, or ExtType(3) numpy scalars.
- `target.<dotted.path>/`: a zarr v2 array, gzip, chunks of at most 64 MiB dividing the shape;
  bfloat16 written natively (version 3; version 2 wrote uint16, which T5X itself refuses).

T5X restores this with `RestoreCheckpointConfig(path=.../checkpoint_<N>, mode='specific')`: it
reads the msgpack, intersects `optimizer` with its own train state, and opens each spec with
its path joined to the checkpoint dir (deleting 'chunks' and 'compressor' first, so only the
shape must agree).
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterator

import msgpack
import numpy as np
import tensorstore as ts

from jaxmerge import failpoints
from jaxmerge.checkpoints.metadata import (
    Index,
    ParamInfo,
    check_array,
    check_tree_names,
    params_header,
    parse_dtype,
    parse_shape,
    parse_step,
)
from jaxmerge.checkpoints.reader_base import ReaderBase
from jaxmerge.checkpoints.shards import host_shards, write_chunks
from jaxmerge.checkpoints.staging import Staging, barrier, is_primary, write_file
from jaxmerge.checkpoints.tensorstore_arrays import TsArrays, first_line, ts_result
from jaxmerge.errors import CheckpointError

VERSION = 3
MSGPACK_FILE = "checkpoint"
_EXT_NDARRAY, _EXT_NPSCALAR = 1, 3
_CHUNKED = "__msgpack_chunked_array__"


class _Inline:
    """An array stored inside the msgpack file: (shape, dtype name, raw bytes)."""

    def __init__(self, shape, dtype_name, data):
        self.shape, self.dtype_name, self.data = tuple(shape), dtype_name, data


def _ext_hook(code, data):
    if code == _EXT_NDARRAY:
        shape, dtype_name, buffer = msgpack.unpackb(data)
        return _Inline(shape, dtype_name, buffer)
    if code == _EXT_NPSCALAR:
        dtype_name, buffer = msgpack.unpackb(data)
        return _Inline((), dtype_name, buffer)
    return msgpack.ExtType(code, data)


def _inline_to_numpy(leaf: _Inline, where: str) -> np.ndarray:
    dtype = parse_dtype(leaf.dtype_name, where)
    shape = parse_shape(leaf.shape, where)
    if not isinstance(leaf.data, bytes):
        kind = type(leaf.data).__name__
        raise CheckpointError(f"{where}: inline array data is {kind}, not bytes")
    count = math.prod(shape)
    if len(leaf.data) != count * dtype.itemsize:
        raise CheckpointError(
            f"{where}: inline array holds {len(leaf.data)} bytes, "
            f"{dtype.name}{list(leaf.shape)} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(leaf.data, dtype).reshape(shape)


def _is_spec(node) -> bool:
    return isinstance(node, dict) and {"driver", "kvstore"} <= set(node)


def _flatten(tree, prefix=()):
    """(path tuple, leaf) for every leaf; specs and chunked arrays are leaves."""
    if isinstance(tree, dict) and not _is_spec(tree) and _CHUNKED not in tree:
        for key, value in tree.items():
            yield from _flatten(value, (*prefix, str(key)))
    else:
        yield prefix, tree


def read_msgpack(file: pathlib.Path) -> dict:
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    try:
        contents = msgpack.unpackb(raw, ext_hook=_ext_hook, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        # truncated files raise ValueError("Unpack failed: incomplete input") and the like
        raise CheckpointError(
            f"{file}: corrupt or truncated msgpack ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no detail'})"
        ) from None
    if not isinstance(contents, dict):
        raise CheckpointError(f"{file}: not a T5X checkpoint (msgpack top level is not a dict)")
    return contents


class Reader(ReaderBase):
    """Reads a T5X legacy checkpoint: parameters are the leaves under optimizer/target."""

    format = "t5x"

    def __init__(self, path):
        self.path = pathlib.Path(path)
        file = self.path / MSGPACK_FILE
        contents = read_msgpack(file)
        version = contents.get("version", 0)
        optimizer = contents.get("optimizer") if version else contents
        if not isinstance(optimizer, dict) or "target" not in optimizer:
            raise CheckpointError(f"{file}: no optimizer/target in the msgpack (version {version})")
        self._file = file
        self._arrays = TsArrays()
        self._leaves: dict[str, object] = {}
        self.params: dict[str, ParamInfo] = {}
        pending = {}
        for path, leaf in _flatten(optimizer["target"]):
            name = "/".join(path)
            where = f"{file}: parameter {name}"
            if _is_spec(leaf):
                pending[name] = self._open_spec(name, leaf, where)
            elif isinstance(leaf, dict) and _CHUNKED in leaf:
                array = _unchunk(leaf, where)
                self._leaves[name] = array
                self.params[name] = ParamInfo(array.shape, array.dtype)
            elif isinstance(leaf, _Inline):
                array = _inline_to_numpy(leaf, where)
                self._leaves[name] = array
                self.params[name] = ParamInfo(array.shape, array.dtype)
            # anything else (None, empty dicts of optax EmptyState) is not a parameter
        for name, (future, expected_shape, expected_dtype, where) in pending.items():
            store = ts_result(future, where)
            if tuple(store.shape) != expected_shape:
                raise CheckpointError(
                    f"{where}: zarr array has shape {list(store.shape)}, the msgpack metadata "
                    f"says {list(expected_shape)}"
                )
            dtype = parse_dtype(store.dtype.numpy_dtype.name, where)
            if expected_dtype is not None and dtype != parse_dtype(expected_dtype, where):
                raise CheckpointError(
                    f"{where}: zarr array has dtype {dtype.name}, the msgpack says {expected_dtype}"
                )
            self._arrays.add(name, store, where)
            self.params[name] = ParamInfo(tuple(store.shape), dtype)
        self.params = {n: self.params[n] for n in sorted(self.params)}
        self.step = self._read_step(optimizer.get("state"))

    def _read_step(self, state) -> int | None:
        """optimizer/state/step: an inline int32[] as T5X writes it (or a plain int, or a spec)."""
        step = state.get("step") if isinstance(state, dict) else None
        where = f"{self._file}: state/step"
        if isinstance(step, _Inline):
            return parse_step(_inline_to_numpy(step, where), where)
        if isinstance(step, int):
            return step
        if _is_spec(step):
            store = ts_result(self._open_spec("state/step", step, where)[0], where)
            return parse_step(ts_result(store.read(), where), where)
        return None

    def _open_spec(self, name: str, spec: dict, where: str):
        try:
            return self._open_spec_unchecked(name, spec, where)
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{where}: malformed tensorstore spec in the msgpack") from None

    def _open_spec_unchecked(self, name: str, spec: dict, where: str):
        """(open future, shape, dtype name, where), opened the way T5X's _read_ts does."""
        spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in spec.items()}
        metadata = spec.get("metadata", {})
        shape = metadata.get("shape")
        if shape is None:
            raise CheckpointError(f"{where}: tensorstore spec has no metadata.shape")
        shape = parse_shape(shape, where)
        # As T5X does: trust the array's own .zarray for chunks and compression.
        metadata.pop("chunks", None)
        metadata.pop("compressor", None)
        # Shape and dtype are compared by the caller, for an error that says which disagrees.
        metadata.pop("shape", None)
        dtype = spec.pop("dtype", None)
        kvstore = spec["kvstore"]
        relative = kvstore.get("path", spec.pop("path", None))
        if relative is None:
            raise CheckpointError(f"{where}: tensorstore spec has no path")
        spec["kvstore"] = {"driver": "file", "path": str(self.path / relative)}
        if dtype == "uint16" or metadata.get("dtype") == "<u2":
            raise CheckpointError(
                f"{where}: uint16-encoded bfloat16 (T5X version 2) is unsupported"
            )
        try:
            future = self._arrays.open(name, spec)
        except ValueError as e:
            raise CheckpointError(f"{where}: bad tensorstore spec ({first_line(e)})") from None
        return future, tuple(shape), dtype, where

    def _read_slices(self, name: str, indices: list[Index]) -> Iterator[np.ndarray]:
        if name in self._leaves:
            return (np.array(self._leaves[name][index]) for index in indices)
        where = f"{self._file.parent / ('target.' + name.replace('/', '.'))}: parameter {name}"
        return self._arrays.read(name, indices, where)

    def _check(self, name: str) -> None:
        if name not in self.params:
            raise CheckpointError(f"{self._file}: no parameter named {name!r}")

    def close(self) -> None:
        self._arrays.clear()
        self._leaves.clear()


def _unchunk(leaf: dict, where: str) -> np.ndarray:
    """Undoes flax's splitting of >2 GiB inline arrays into numbered flat chunks."""
    try:
        shape = tuple(leaf["shape"][str(i)] for i in range(len(leaf["shape"])))
        chunks = [
            _inline_to_numpy(leaf["chunks"][str(i)], where) for i in range(len(leaf["chunks"]))
        ]
    except (KeyError, TypeError):
        raise CheckpointError(f"{where}: malformed chunked inline array") from None
    shape = parse_shape(shape, where)
    if not chunks or sum(c.size for c in chunks) != math.prod(shape):
        raise CheckpointError(f"{where}: chunked inline array does not fill its shape {shape}")
    return np.concatenate([c.reshape(-1) for c in chunks]).reshape(shape)


CHUNK_BYTES = 64 << 20  # T5X's _DESIRED_CHUNK_SIZE_BYTES


def spec_for(name: str, info: ParamInfo, compression_level: int, chunks: list[int]) -> dict:
    """The TensorStore spec T5X stores in the msgpack for `target/<name>` (relative path)."""
    return ts.Spec(
        {
            "driver": "zarr",
            "dtype": info.dtype.name,
            "kvstore": {"driver": "file", "path": "target." + name.replace("/", ".")},
            "metadata": {
                "compressor": {"id": "gzip", "level": compression_level},
                "shape": list(info.shape),
                "chunks": list(chunks),
            },
        }
    ).to_json()


def _nest(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _ext_default(obj):
    if isinstance(obj, np.ndarray):
        body = msgpack.packb((list(obj.shape), obj.dtype.name, obj.tobytes("C")))
        return msgpack.ExtType(_EXT_NDARRAY, body)
    raise TypeError(f"cannot serialize {type(obj)}")


def checkpoint_msgpack(specs: dict[str, dict], step: int) -> bytes:
    """The `checkpoint` file: version 3, optimizer/target specs, optimizer/state/step inline."""
    state = {"target": _nest(specs), "state": {"step": np.asarray(step, np.int32)}}
    return msgpack.packb({"version": VERSION, "optimizer": state}, default=_ext_default)


class Writer:
    """Writes OUT/checkpoint_<step>/ in T5X's legacy format, one zarr array per parameter."""

    format = "t5x"

    def __init__(
        self,
        path,
        params: dict[str, ParamInfo],
        *,
        step: int = 0,
        reference=None,
        max_shard_bytes: int = 0,
        resume: bool = False,
        overwrite: bool = False,
        run_key: str | None = None,
        compression_level: int = 1,
    ):
        del reference, max_shard_bytes
        out = pathlib.Path(path).absolute()
        check_tree_names(out, params)
        self.params = dict(params)
        self.step = int(step)
        header = {
            "format": self.format,
            "params": params_header(self.params),
            "run": run_key,
            "step": self.step,
            "compression_level": compression_level,
        }
        self._staging = Staging(out, header, resume=resume, overwrite=overwrite)
        self.path = out / f"checkpoint_{self.step}"
        self.done = self._staging.done
        self._dir = self._staging.tmp / self.path.name
        self._dir.mkdir(exist_ok=True)
        self._level = compression_level

    def write(self, name: str, array) -> None:
        if name not in self.params:
            raise CheckpointError(f"{self.path}: parameter {name} was not declared in create()")
        info = self.params[name]
        check_array(str(self.path), name, info, array)
        chunks = write_chunks(array, info, CHUNK_BYTES)
        spec = spec_for(name, info, self._level, chunks)
        relative = spec["kvstore"]["path"]
        spec["kvstore"] = {"driver": "file", "path": str(self._dir / relative)}
        where = f"{self._dir / relative}: parameter {name}"
        # Process 0 creates the array (replacing a partial one from a killed run); then every
        # process writes the shards it holds into chunks of its own.
        if is_primary():
            store = ts_result(ts.open(spec, create=True, delete_existing=True), where)
            failpoints.hit("t5x.array_created")
        barrier(f"created:{where}")
        if not is_primary():
            store = ts_result(ts.open(spec, open=True, write=True), where)
        futures = [store[index].write(data) for index, data in host_shards(array)]
        failpoints.hit("t5x.shards_in_flight")
        for f in futures:
            ts_result(f, where)
        self._staging.mark_done(name)

    def finalize(self, extra_files: dict[str, bytes] | None = None) -> pathlib.Path:
        missing = [n for n in self.params if n not in self.done]
        if missing:
            raise CheckpointError(
                f"{self.path}: finalize before writing {len(missing)} parameters, e.g. {missing[0]}"
            )
        if is_primary():
            specs = {}
            for name, info in self.params.items():  # chunks as written (they follow sharding)
                zarray = self._dir / ("target." + name.replace("/", ".")) / ".zarray"
                chunks = json.loads(zarray.read_text())["chunks"]
                specs[name] = spec_for(name, info, self._level, chunks)
            write_file(self._dir / MSGPACK_FILE, checkpoint_msgpack(specs, self.step))
            failpoints.hit("t5x.msgpack_written")
            self._staging.write_files(extra_files)
        self._staging.commit()
        return self.path

    def abort(self) -> None:
        self._staging.abort()

    def close(self) -> None:
        """Releases the output lock, keeping what is written for a resume (after a failure)."""
        self._staging.close()


def is_t5x_dir(path: pathlib.Path) -> bool:
    return (path / MSGPACK_FILE).is_file()
