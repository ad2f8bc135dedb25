"""Orbax PyTree checkpoints: plain directories, and T5X's `checkpoint_<N>/state/`.

What Orbax's PyTreeCheckpointHandler writes into an item directory (orbax-checkpoint 0.12):
- `_METADATA`: JSON `{"tree_metadata": {"('target', 'encoder', ...)": {"key_metadata":
  [{"key": "target", "key_type": 2}, ...], "value_metadata": {"value_type": "np.ndarray" |
  "jax.Array" | "scalar", "skip_deserialize": false}}}, "use_ocdbt": true, "use_zarr3": false,
  ...}`; key_type 1 is a sequence index, 2 a dict key.
- with OCDBT (the default): `manifest.ocdbt` + `d/` (+ `ocdbt.process_<i>/` sub-databases
  the root manifest refers to); each leaf is a zarr array (v2, or v3 when use_zarr3) stored
  under the key `target.encoder.layers_0...` (tree keys joined by '.'). Without OCDBT each
  leaf is a directory of that name.
A step directory written by a CheckpointManager also has `_CHECKPOINT_METADATA` naming the
handler of each item; T5X's Orbax checkpointer restores item `state` of `checkpoint_<N>` with
a PyTreeCheckpointHandler(use_ocdbt=True), the tree being its train-state dict
`{'target': params, 'state': {'step': ..., 'param_states': ...}}`.

The writer produces exactly that with TensorStore, one parameter per OCDBT commit, so a
parameter is durable as soon as it is written. With several processes it writes as Orbax
does: each process its own shards into its own database, `ocdbt.process_<i>/` (process 0
also the zarr metadata), and process 0 merges them into the root manifest at the end (one
atomic OCDBT transaction copying each child's keys; the children's data files stay where
they are, referenced).
"""

from __future__ import annotations

import ast
import json
import pathlib
import time
from collections.abc import Iterator

import jax
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
    parse_step,
)
from jaxmerge.checkpoints.reader_base import ReaderBase
from jaxmerge.checkpoints.shards import host_shards, write_chunks
from jaxmerge.checkpoints.staging import Staging, barrier, is_primary, write_file
from jaxmerge.checkpoints.tensorstore_arrays import TsArrays, ts_result
from jaxmerge.errors import CheckpointError

METADATA = "_METADATA"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"
STATE = "state"
_HANDLER = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"
_ARRAY_TYPES = {"np.ndarray", "jax.Array", "scalar"}
# Item directories a CheckpointManager step may hold: T5X ('state'), MaxText ('items'),
# single-item managers ('default').
ITEM_NAMES = (STATE, "items", "default")

# Chunks live inside OCDBT data files, so small ones cost no files: 8 MiB lets TensorStore
# (de)compress a big tensor on several cores and a sharded read fetch only its part.
CHUNK_BYTES = 8 << 20
_OCDBT_CONFIG = {
    "max_inline_value_bytes": 1024,
    "max_decoded_node_bytes": 100_000_000,
    "manifest_kind": "single",
}


def item_dir(path: pathlib.Path) -> pathlib.Path | None:
    """The directory holding `_METADATA`: path itself, or its state/items/default item."""
    if (path / METADATA).is_file():
        return path
    for name in ITEM_NAMES:
        if (path / name / METADATA).is_file():
            return path / name
    return None


def _kvstore(directory: pathlib.Path, key: str, use_ocdbt: bool) -> dict:
    if use_ocdbt:
        return {
            "driver": "ocdbt",
            "base": {"driver": "file", "path": str(directory) + "/"},
            "path": key,
            "cache_pool": "cache_pool#ocdbt",
        }
    return {"driver": "file", "path": str(directory / key) + "/"}


def _write_context() -> ts.Context:
    return ts.Context(
        {"file_io_concurrency": {"limit": 128}, "cache_pool#ocdbt": {"total_bytes_limit": 10**8}}
    )


def _step_from_dir_name(path: pathlib.Path) -> int | None:
    for part in (path.name, path.parent.name):
        digits = part.removeprefix("checkpoint_")
        if digits.isdigit():
            return int(digits)
    return None


class Reader(ReaderBase):
    """Reads an Orbax PyTree checkpoint, one leaf (or one shard of it) at a time.

    Names: for a T5X train state (a top-level 'target'), the leaves under target/ without
    that prefix; for a tree with a top-level 'params' (MaxText, Flax TrainState), the leaves
    under params/ without that prefix; otherwise every array leaf, its full path.
    """

    format = "orbax"

    def __init__(self, path):
        self.path = pathlib.Path(path)
        directory = item_dir(self.path)
        if directory is None:
            raise CheckpointError(f"{self.path}: no Orbax {METADATA} file here or in {ITEM_NAMES}")
        self._dir = directory
        meta_file = directory / METADATA
        try:
            meta = json.loads(meta_file.read_text())
            tree = meta["tree_metadata"]
            if not isinstance(tree, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise CheckpointError(f"{meta_file}: not an Orbax PyTree metadata file") from None
        self._use_ocdbt = bool(meta.get("use_ocdbt", True))
        driver = "zarr3" if meta.get("use_zarr3", False) else "zarr"
        if self._use_ocdbt and not (directory / "manifest.ocdbt").is_file():
            raise CheckpointError(
                f"{directory}: _METADATA says OCDBT but manifest.ocdbt is missing"
            )
        leaves: dict[tuple[str, ...], str] = {}
        for key_repr, entry in tree.items():
            try:
                keys = tuple(str(k["key"]) for k in entry["key_metadata"])
                value_type = entry["value_metadata"]["value_type"]
            except (KeyError, TypeError):
                try:
                    keys = tuple(str(k) for k in ast.literal_eval(key_repr))
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    raise CheckpointError(f"{meta_file}: malformed tree entry {key_repr}") from None
                value_type = "np.ndarray"
            if isinstance(value_type, str) and value_type in _ARRAY_TYPES:
                leaves[keys] = value_type
        prefix: tuple[str, ...] = ()
        top = {k[0] for k in leaves if k}
        if "target" in top:
            prefix = ("target",)
        elif "params" in top:
            prefix = ("params",)
        self._arrays = TsArrays(**{"cache_pool#ocdbt": {"total_bytes_limit": 10**8}})
        self._keys: dict[str, str] = {}
        futures = {}
        for keys in leaves:
            if keys[: len(prefix)] != prefix or len(keys) == len(prefix):
                continue
            name = "/".join(keys[len(prefix) :])
            key = ".".join(keys)
            spec = {"driver": driver, "kvstore": _kvstore(directory, key, self._use_ocdbt)}
            futures[name] = self._arrays.open(name, spec)
            self._keys[name] = key
        self.params: dict[str, ParamInfo] = {}
        for name, future in futures.items():
            where = f"{directory}: parameter {name}"
            store = ts_result(future, where)
            dtype = parse_dtype(store.dtype.numpy_dtype.name, where)
            self._arrays.add(name, store, where)
            self.params[name] = ParamInfo(tuple(store.shape), dtype)
        self.params = {n: self.params[n] for n in sorted(self.params)}
        self.step = _step_from_dir_name(directory)
        for keys in (("state", "step"), ("step",)):
            if keys in leaves:
                spec = {
                    "driver": driver,
                    "kvstore": _kvstore(directory, ".".join(keys), self._use_ocdbt),
                }
                where = f"{directory}: {'/'.join(keys)}"
                store = ts_result(self._arrays.open("/".join(keys), spec), where)
                self.step = parse_step(ts_result(store.read(), where), where)
                break

    def _read_slices(self, name: str, indices: list[Index]) -> Iterator[np.ndarray]:
        return self._arrays.read(name, indices, f"{self._dir}: parameter {name}")

    def _check(self, name: str) -> None:
        if name not in self.params:
            raise CheckpointError(f"{self._dir}: no parameter named {name!r}")

    def close(self) -> None:
        self._arrays.clear()


def _tree_entry(keys: tuple[str, ...], value_type: str) -> dict:
    return {
        "key_metadata": [{"key": k, "key_type": 2} for k in keys],
        "value_metadata": {"value_type": value_type, "skip_deserialize": False},
    }


def pytree_metadata(names, *, prefix=("target",), step_keys=("state", "step")) -> dict:
    """The `_METADATA` Orbax's PyTreeCheckpointHandler writes for these leaves (OCDBT, zarr v2)."""
    tree = {}
    for name in names:
        keys = (*prefix, *name.split("/"))
        tree[str(keys)] = _tree_entry(keys, "np.ndarray")
    tree[str(tuple(step_keys))] = _tree_entry(tuple(step_keys), "np.ndarray")
    return {
        "tree_metadata": tree,
        "use_ocdbt": True,
        "use_zarr3": False,
        "store_array_data_equal_to_fill_value": True,
        "custom_metadata": None,
    }


class Writer:
    """Writes OUT/checkpoint_<step>/state/ as T5X's Orbax checkpointer does (OCDBT, zarr v2)."""

    format = "orbax"

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
        compression: str | None = "zstd",
    ):
        del reference, max_shard_bytes
        out = pathlib.Path(path).absolute()
        check_tree_names(out, params)
        self.params = dict(params)
        self.step = int(step)
        self._compressor = None if compression is None else {"id": compression, "level": 1}
        header = {
            "format": self.format,
            "params": params_header(self.params),
            "run": run_key,
            "step": self.step,
            "compression": compression,
        }
        self._staging = Staging(out, header, resume=resume, overwrite=overwrite)
        self.path = out / f"checkpoint_{self.step}"
        self.done = self._staging.done
        self._step_dir = self._staging.tmp / self.path.name
        self._dir = self._step_dir / STATE
        self._dir.mkdir(parents=True, exist_ok=True)
        # One OCDBT database takes one writer: with several processes, one each.
        self._multi = jax.process_count() > 1
        self._db = self._dir / f"ocdbt.process_{jax.process_index()}" if self._multi else self._dir
        self._context = _write_context()
        self._init_ns = time.time_ns()

    def _write_leaf(self, key: str, info: ParamInfo, array, where: str) -> None:
        shards = host_shards(array) if isinstance(array, jax.Array) or is_primary() else []
        if not shards and not is_primary():
            return  # another process holds every shard; process 0 writes the metadata
        kvstore = _kvstore(self._db, key, use_ocdbt=True)
        kvstore["config"] = _OCDBT_CONFIG
        spec = {
            "driver": "zarr",
            "kvstore": kvstore,
            "metadata": {
                "shape": list(info.shape),
                "chunks": write_chunks(array, info, CHUNK_BYTES),
                "dtype": _zarr_dtype(info.dtype),
                "compressor": self._compressor,
            },
        }
        if is_primary():
            opened = ts.open(spec, create=True, delete_existing=True, context=self._context)
        else:  # chunks only: the .zarray is process 0's
            opened = ts.open(spec, open=True, assume_metadata=True, context=self._context)
        store = ts_result(opened, where)
        failpoints.hit("orbax.array_created")
        futures = [store[index].write(data) for index, data in shards]
        failpoints.hit("orbax.shards_in_flight")
        for f in futures:
            ts_result(f, where)

    def write(self, name: str, array) -> None:
        if name not in self.params:
            raise CheckpointError(f"{self.path}: parameter {name} was not declared in create()")
        info = self.params[name]
        check_array(str(self.path), name, info, array)
        key = "target." + name.replace("/", ".")
        self._write_leaf(key, info, array, f"{self.path / STATE}: parameter {name}")
        self._staging.mark_done(name)

    def finalize(self, extra_files: dict[str, bytes] | None = None) -> pathlib.Path:
        missing = [n for n in self.params if n not in self.done]
        if missing:
            raise CheckpointError(
                f"{self.path}: finalize before writing {len(missing)} parameters, e.g. {missing[0]}"
            )
        step = np.asarray(self.step, np.int32)
        self._write_leaf("state.step", ParamInfo((), step.dtype), step, f"{self.path}: state/step")
        failpoints.hit("orbax.step_written")
        if self._multi:
            barrier(f"orbax-written:{self.path}")
            if is_primary():
                _merge_process_databases(self._dir, self._context, str(self.path))
        if not is_primary():
            self._staging.commit()  # waits for process 0's commit
            return self.path
        meta = pytree_metadata(self.params)
        write_file(self._dir / METADATA, json.dumps(meta).encode())
        failpoints.hit("orbax.metadata_written")
        now = time.time_ns()
        step_meta = {
            "item_handlers": {STATE: _HANDLER},
            "metrics": {},
            "performance_metrics": {},
            "init_timestamp_nsecs": self._init_ns,
            "commit_timestamp_nsecs": now,
            "custom_metadata": {},
        }
        write_file(self._step_dir / CHECKPOINT_METADATA, json.dumps(step_meta).encode())
        self._staging.write_files(extra_files)
        self._staging.commit()
        return self.path

    def abort(self) -> None:
        self._staging.abort()

    def close(self) -> None:
        """Releases the output lock, keeping what is written for a resume (after a failure)."""
        self._staging.close()


def _merge_process_databases(directory: pathlib.Path, context: ts.Context, where: str) -> None:
    """Copies every `ocdbt.process_<i>/` database's keys into DIR's root one, atomically."""
    root = {"driver": "ocdbt", "base": {"driver": "file", "path": str(directory) + "/"}}
    root = ts_result(ts.KvStore.open({**root, "config": _OCDBT_CONFIG}, context=context), where)
    transaction = ts.Transaction(atomic=True)
    for child in sorted(directory.glob("ocdbt.process_*")):
        spec = {"driver": "ocdbt", "base": {"driver": "file", "path": str(child) + "/"}}
        kvstore = ts_result(ts.KvStore.open(spec, context=context), f"{where}: {child.name}")
        ts_result(kvstore.experimental_copy_range_to(root.with_transaction(transaction)), where)
    ts_result(transaction.commit_async(), where)


def _zarr_dtype(dtype: np.dtype) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else dtype.str
