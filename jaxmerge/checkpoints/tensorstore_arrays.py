"""TensorStore arrays of a T5X or Orbax reader: bounded caches, reads in flight, errors.

Also `free_memory()`, which every read of a large shard checks first: TensorStore aborts
the process when it cannot allocate, so a read that cannot fit is refused instead."""

from __future__ import annotations

import math
import os
import pathlib
from collections import deque
from collections.abc import Iterator

import numpy as np
import tensorstore as ts

from jaxmerge import failpoints
from jaxmerge.checkpoints.metadata import Index
from jaxmerge.errors import CheckpointError

# Decoded chunks TensorStore may keep per reader, so the shards of one tensor that share a
# chunk decode it once rather than once per shard. Bounded, whatever the model size.
READ_CACHE_BYTES = 256 << 20


# Shard reads a reader keeps in flight at once (at least one shard, whatever its size).
READ_WINDOW_BYTES = 256 << 20


# Chunks larger than their array are refused past this size (writers divide the shape).
MAX_CHUNK_BYTES = 64 << 20


def free_memory() -> int:
    """MemAvailable from /proc/meminfo, else physical memory."""
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def read_context(cache_bytes: int = 0, **extra) -> ts.Context:
    return ts.Context(
        {
            "cache_pool": {"total_bytes_limit": cache_bytes},
            "file_io_concurrency": {"limit": 128},
            **extra,
        }
    )


class TsArrays:
    """The TensorStore arrays of one reader.

    Each array is opened without a chunk cache, so reading it whole copies each chunk once.
    Reading several shards of it goes through a second handle, opened on first need, whose
    bounded cache lets shards that share a chunk decode that chunk once.
    """

    def __init__(self, **extra_context):
        self._plain = read_context(0, **extra_context)
        self._caching = read_context(READ_CACHE_BYTES, **extra_context)
        self._specs: dict[str, dict] = {}
        self._stores: dict[str, ts.TensorStore] = {}
        self._cached: dict[str, ts.TensorStore] = {}

    def open(self, name: str, spec: dict):
        """Starts opening `spec` for `name`; pass the future's result to `add`."""
        self._specs[name] = spec
        return ts.open(spec, open=True, read=True, context=self._plain)

    def add(self, name: str, store: ts.TensorStore, where: str) -> None:
        """Keeps an opened array, unless its chunks claim far more than the array holds (a
        chunk is decoded whole: a corrupt claim would exhaust memory, and TensorStore aborts)."""
        itemsize = store.dtype.numpy_dtype.itemsize
        chunk = list(store.chunk_layout.read_chunk.shape)
        if math.prod(chunk) * itemsize > max(math.prod(store.shape) * itemsize, MAX_CHUNK_BYTES):
            raise CheckpointError(
                f"{where}: chunks {chunk} are larger than the array {list(store.shape)}"
            )
        self._stores[name] = store

    def read(self, name: str, indices: list[Index], where: str) -> Iterator[np.ndarray]:
        """Yields the shards in order, keeping reads in flight up to READ_WINDOW_BYTES."""
        store = self._stores[name]
        if len(indices) > 1:
            if name not in self._cached:
                spec = self._specs[name]
                future = ts.open(spec, open=True, read=True, context=self._caching)
                self._cached[name] = ts_result(future, where)
            store = self._cached[name]
        itemsize = store.dtype.numpy_dtype.itemsize
        pending: deque = deque()
        in_flight = 0
        for index in indices:
            nbytes = itemsize * math.prod(s.stop - s.start for s in index)
            if nbytes > free_memory():  # TensorStore aborts the process when it cannot allocate
                raise CheckpointError(
                    f"{where}: reading {nbytes} bytes needs more memory than is free "
                    f"({free_memory()} bytes)"
                )
            while pending and in_flight + nbytes > READ_WINDOW_BYTES:
                future, done_bytes = pending.popleft()
                in_flight -= done_bytes
                yield ts_result(future, where)
            failpoints.hit("tensorstore.read")
            pending.append((store[index].read(), nbytes))
            in_flight += nbytes
        while pending:
            yield ts_result(pending.popleft()[0], where)

    def clear(self) -> None:
        self._stores.clear()
        self._cached.clear()


def first_line(e: Exception) -> str:
    """The gist of a library error: its first line, without TensorStore's spec dump."""
    text = str(e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    return text.split(" [tensorstore_spec=")[0].split(" [source locations=")[0]


def ts_result(future, where: str):
    try:
        return future.result()
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where}: {first_line(e)}") from None
