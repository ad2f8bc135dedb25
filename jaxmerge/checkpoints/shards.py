"""Shards in and out: readers place data with `assemble`, writers take `host_shards`.

`assemble` reads each addressable device's index once (replicas share the read), straight
from the file into a host buffer the size of that shard, then `jax.device_put` on that
device. Nothing ever holds the whole tensor unless the caller asked for it (sharding=None).
Writers copy one distinct shard at a time to the host (`host_shards`) and chunk their
arrays along the shard shape (`write_chunks`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np

from jaxmerge.checkpoints.metadata import Index, ParamInfo
from jaxmerge.errors import CheckpointError


def normalize_index(index: Index, shape: Sequence[int]) -> Index:
    """`index` with every slice explicit, (slice(0, n, 1), ...), so equal shards compare equal."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(slice(*s.indices(n)) for s, n in zip(index, shape, strict=True))


def assemble(
    name: str,
    info: ParamInfo,
    sharding: jax.sharding.Sharding | None,
    read_slices: Callable[[list[Index]], Iterable[np.ndarray]],
) -> jax.Array:
    """A jax.Array with `sharding`, each distinct shard read once by `read_slices`.

    read_slices(indices) yields one host array per index (normalized, shard-sized), in order;
    each goes to its device(s) as soon as it arrives and its host buffer is dropped, so the
    host never holds more than the reader's window of shards, not the whole tensor.
    """
    shape = info.shape
    if sharding is None:
        (whole,) = read_slices([normalize_index((), shape)])
        return jax.device_put(whole)  # the default device
    device_indices = {
        device: normalize_index(index, shape)
        for device, index in sharding.addressable_devices_indices_map(shape).items()
    }
    # slices are unhashable before Python 3.12: key the distinct shards by (start, stop)
    devices_of: dict[tuple, list[jax.Device]] = {}
    for device, index in device_indices.items():
        devices_of.setdefault(_key(index), []).append(device)
    distinct = {_key(index): index for index in device_indices.values()}
    placed: dict[jax.Device, jax.Array] = {}
    for key, host in zip(distinct, read_slices(list(distinct.values())), strict=True):
        expected = tuple(stop - start for start, stop in key)
        if host.shape != expected:
            raise CheckpointError(f"parameter {name}: read shape {host.shape}, expected {expected}")
        for device in devices_of[key]:
            placed[device] = jax.device_put(host, device)
        del host
    arrays = [placed[device] for device in device_indices]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _key(index: Index) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in index)


def host_shards(array) -> list[tuple[Index, np.ndarray]]:
    """(index, host data) for each distinct shard of `array` this process holds (replica 0).

    A numpy array is one shard covering everything; a jax.Array is copied to host one shard at
    a time, never gathered whole.
    """
    if isinstance(array, jax.Array):
        out = []
        for shard in array.addressable_shards:
            if shard.replica_id == 0:
                out.append((normalize_index(shard.index, array.shape), np.asarray(shard.data)))
        return out
    array = np.asarray(array)
    return [(normalize_index((), array.shape), array)]


def chunk_shape(shape: Sequence[int], itemsize: int, target_bytes: int = 64 << 20) -> list[int]:
    """A chunk shape dividing `shape`, at most `target_bytes`, largest dimensions split first."""
    chunks = list(shape)
    target = max(1, target_bytes // itemsize)
    while int(np.prod(chunks, dtype=np.int64)) > target:
        i = int(np.argmax(chunks))
        if chunks[i] <= 1:
            break
        n = shape[i]
        # the next smaller divisor of the full dimension
        chunks[i] = max(d for d in range(1, chunks[i]) if n % d == 0)
    return chunks


def write_chunks(array, info: ParamInfo, target_bytes: int) -> list[int]:
    """Chunks for writing `array`: dividing its shard shape when it is a sharded jax.Array (as
    T5X chunks each host's write shape), so shards never share a chunk and compress in
    parallel; else dividing the full shape."""
    shape = info.shape
    if isinstance(array, jax.Array) and not array.sharding.is_fully_replicated:
        shape = tuple(array.sharding.shard_shape(info.shape))
    return chunk_shape(shape, info.dtype.itemsize, target_bytes)
