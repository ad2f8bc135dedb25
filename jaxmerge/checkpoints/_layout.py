"""Pieces every format shares: ParamInfo, sharded assembly, and the staging directory.

Readers place data with `assemble`: each addressable device's index is read once (replicas
share the read), straight from the file into a host buffer the size of that shard, then
`jax.device_put` on that device. Nothing ever holds the whole tensor unless the caller asked
for it (sharding=None).

Writers write into `Staging`: a temporary sibling `OUT.jaxmerge-tmp/` with a journal; a
parameter is journaled only once its data is durable (fsync'd, or fdatasync'd by a
`SyncBehind` thread while the writer goes on), so a killed run resumes; `commit` renames the
sibling into place, so nothing half-written looks finished. An
`OutputLock` (`OUT.jaxmerge-lock`, flock) keeps a second writer of the same OUT out; the kernel
releases it when its holder dies, so a killed run's re-run takes it over.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import pathlib
import re
import shutil
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import ml_dtypes
import numpy as np
import tensorstore as ts
from jax.experimental import multihost_utils

from jaxmerge import failpoints
from jaxmerge.errors import CheckpointError

Index = tuple[slice, ...]

TMP_SUFFIX = ".jaxmerge-tmp"
OLD_SUFFIX = ".jaxmerge-old"
LOCK_SUFFIX = ".jaxmerge-lock"
JOURNAL = ".jaxmerge-journal.jsonl"


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """Shape and numpy dtype of one parameter (bf16 is `ml_dtypes.bfloat16`)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: no overflow


# Shapes a file may claim: numpy takes at most 64 dimensions and refuses a product of the
# dimensions (zeros aside) past its address space; no real parameter comes near these.
MAX_RANK = 32
MAX_ELEMENTS = 2**48


def parse_shape(shape, where: str) -> tuple[int, ...]:
    """A shape read from a file: at most MAX_RANK non-negative integers whose product
    (counting a 0 as 1) is at most MAX_ELEMENTS; else CheckpointError."""
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise CheckpointError(f"{where}: shape has {len(shape)} dimensions (at most {MAX_RANK})")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise CheckpointError(f"{where}: shape {list(shape)} is implausibly large")
    return tuple(shape)


# Dtypes a checkpoint may hold; anything else is refused with a CheckpointError.
SUPPORTED_DTYPES = {
    np.dtype(d)
    for d in (
        np.float64,
        np.float32,
        np.float16,
        ml_dtypes.bfloat16,
        np.int64,
        np.int32,
        np.int16,
        np.int8,
        np.uint8,
        np.bool_,
    )
}


def parse_dtype(name: str, where: str) -> np.dtype:
    """numpy dtype for a name such as 'float32', '<f4' or 'bfloat16'; else CheckpointError."""
    try:
        dtype = np.dtype(getattr(ml_dtypes, name, name))
    except TypeError:
        raise CheckpointError(f"{where}: unsupported dtype {name!r}") from None
    if dtype not in SUPPORTED_DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {name!r}")
    return dtype


def parse_step(value, where: str) -> int:
    """A training step stored as an array: one integer element, else CheckpointError."""
    value = np.asarray(value)
    if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
        raise CheckpointError(f"{where}: step is {value.dtype.name}{list(value.shape)}, not an int")
    return int(value.reshape(-1)[0])


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


class ReaderBase:
    """What every format's Reader shares: `read` assembles a jax.Array from the shards the
    subclass's `_read_slices(name, indices)` yields, `read_numpy` reads the whole parameter,
    and `with reader:` closes it. Subclasses define `params`, `_check(name)` (an error
    naming their file), `_read_slices` and `close`."""

    maps_files = False  # True: arrays alias a mapping of the file, which XLA cannot take over

    def read(self, name: str, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
        self._check(name)
        return assemble(name, self.params[name], sharding, lambda idx: self._read_slices(name, idx))

    def read_numpy(self, name: str) -> np.ndarray:
        self._check(name)
        (out,) = self._read_slices(name, [normalize_index((), self.params[name].shape)])
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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


def check_array(where: str, name: str, info: ParamInfo, array) -> None:
    """CheckpointError unless `array` has the shape and dtype promised for `name` in create()."""
    if tuple(array.shape) != info.shape or np.dtype(array.dtype) != info.dtype:
        raise CheckpointError(
            f"{where}: parameter {name}: got {np.dtype(array.dtype).name}{list(array.shape)}, "
            f"create() declared {info.dtype.name}{list(info.shape)}"
        )


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


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: pathlib.Path, data: bytes) -> None:
    """Writes and fsyncs one small file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def barrier(tag: str) -> None:
    """Waits for every process (multi-controller runs); nothing to wait for in one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxmerge:{tag}")


def is_primary() -> bool:
    """Process 0 owns the directory operations, the journal and the metadata files."""
    return jax.process_index() == 0


class OutputLock:
    """An exclusive flock on `OUT.jaxmerge-lock`: one writer of OUT at a time, on this host
    or another (a local filesystem, or one with working flock).

    The file names its holder for the refusal message, and is removed on release. A process
    that locked a file just removed finds another inode (or none) at the path and tries again,
    so two holders never coexist. A holder killed with SIGKILL loses the lock with its life.
    """

    def __init__(self, out: pathlib.Path):
        self.path = out.with_name(out.name + LOCK_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            file = open(self.path, "a+")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "holder not yet named"
                file.close()
                raise CheckpointError(
                    f"{out}: another merge is writing this output ({holder}; lock {self.path})"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            file.close()
        file.truncate(0)
        file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)  # before closing: nobody else holds it yet
            self._file.close()
            self._file = None


def remove_stale_lock(out: pathlib.Path) -> None:
    """Removes OUT's lock file if nobody holds it (left by a writer killed after its commit)."""
    out = pathlib.Path(out)
    if not out.with_name(out.name + LOCK_SUFFIX).exists():
        return
    try:
        lock = OutputLock(pathlib.Path(out).absolute())
    except (CheckpointError, OSError):
        return  # held by a running merge, or not ours to touch
    lock.release()


class Staging:
    """The temporary sibling `OUT.jaxmerge-tmp/` a writer fills, its journal, and the commit.

    The journal's first line records what the run writes (format, parameters, step, options);
    each later line names one parameter that is durably written. `resume=True` keeps a partial
    run whose first line matches; anything else starts from an empty directory. The writer
    holds the OutputLock from here until commit, abort or close.

    With several processes (a shared filesystem, as T5X assumes), every process writes its
    own shards; process 0 alone locks, creates and renames directories and keeps the journal,
    and a parameter is journaled only after every process has written its part.
    """

    def __init__(self, out: pathlib.Path, header: dict, *, resume: bool, overwrite: bool):
        self.out = pathlib.Path(out).absolute()
        self.tmp = self.out.with_name(self.out.name + TMP_SUFFIX)
        self.header = json.loads(json.dumps(header))  # what the journal will hold
        self._journal = None
        self._lock = OutputLock(self.out) if is_primary() else None
        try:
            self._open(resume, overwrite)
        except BaseException:
            self.close()
            raise
        barrier(f"staging:{self.out}")
        self.done: set[str] = self._read_done()

    def _open(self, resume: bool, overwrite: bool) -> None:
        if is_primary():
            self._undo_half_commit()
        if self.out.exists() and not overwrite:
            if not self.out.is_dir() or any(self.out.iterdir()):
                raise CheckpointError(
                    f"{self.out}: output exists and is not empty (overwrite=True replaces it)"
                )
        if is_primary():
            if not (resume and self._read_done()) and self.tmp.exists():
                shutil.rmtree(self.tmp)
            if not self.tmp.exists():
                self.tmp.mkdir(parents=True)
                failpoints.hit("staging.created")
                self._append(self.header)
            self._journal = open(self.tmp / JOURNAL, "a")  # noqa: SIM115 - closed in close()

    def _undo_half_commit(self) -> None:
        """A commit killed between its renames left the old output aside: put it back (the
        staged one, its journal gone, is redone); one killed after them left it to remove."""
        old = self.out.with_name(self.out.name + OLD_SUFFIX)
        if old.exists():
            if self.out.exists():
                shutil.rmtree(old)
            else:
                old.rename(self.out)

    def _read_done(self) -> set[str]:
        """Names journaled under a header equal to ours; empty if none or another run's."""
        journal = self.tmp / JOURNAL
        if not journal.exists():
            return set()
        lines = journal.read_text().splitlines()
        try:
            entries = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            entries = [json.loads(line) for line in lines[:-1]]  # torn last line
        if not entries or entries[0] != self.header:
            return set()
        return {e["done"] for e in entries[1:] if "done" in e}

    def _append(self, entry: dict) -> None:
        with open(self.tmp / JOURNAL, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def mark_done(self, name: str) -> None:
        """Call on every process once its part of `name` is fsync'd (from one thread)."""
        barrier(f"written:{self.out}:{name}")
        failpoints.hit("journal.before_append")
        if self._journal is not None:
            self._journal.write(json.dumps({"done": name}) + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())
        failpoints.hit("journal.after_append")
        self.done.add(name)

    def write_files(self, files: dict[str, bytes] | None) -> None:
        """Writes small files (manifest.json, config.gin) at the top of the staged output."""
        failpoints.hit("finalize.before_extra_files")
        for file_name, data in (files or {}).items():
            write_file(self.tmp / file_name, data)
        failpoints.hit("finalize.after_extra_files")

    def commit(self) -> pathlib.Path:
        """Removes the journal, fsyncs, renames the sibling onto OUT (replacing an old OUT)."""
        barrier(f"finalize:{self.out}")
        if is_primary():
            failpoints.hit("commit.begin")
            self._journal.close()
            (self.tmp / JOURNAL).unlink()
            fsync_dir(self.tmp)
            failpoints.hit("commit.journal_removed")
            old = self.out.with_name(self.out.name + OLD_SUFFIX)
            if self.out.exists():
                if old.exists():
                    shutil.rmtree(old)
                self.out.rename(old)
                failpoints.hit("commit.old_moved")
            self.tmp.rename(self.out)
            fsync_dir(self.out.parent)
            failpoints.hit("commit.renamed")
            if old.exists():
                shutil.rmtree(old)
            failpoints.hit("commit.done")
        barrier(f"committed:{self.out}")
        self.close()
        return self.out

    def close(self) -> None:
        """Releases the journal and the lock; a staging directory stays for a resume."""
        if self._journal is not None and not self._journal.closed:
            self._journal.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def abort(self) -> None:
        """Removes the staging directory and releases the lock."""
        if self._journal is not None and not self._journal.closed:
            self._journal.close()
        if is_primary() and self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.close()


class SyncBehind:
    """Journals written parameters once their data is on disk, on a thread of its own.

    A writer calls `written(name, fd)` as soon as it has handed a parameter's bytes to the
    kernel, and goes on with the next one. This thread fdatasyncs every file written since
    its last round, then journals those parameters (`Staging.mark_done`, in order). The
    disk thus writes from the first parameter on, beside the merge, instead of the writer
    waiting for each fsync in turn; a journaled parameter is exactly as durable as before.
    `drain()` waits until everything written is journaled; a failed sync (EIO, ENOSPC) is
    raised by the next `written` or `drain`, and nothing after it is journaled.
    One process only: with several, every write is journaled in step behind a barrier.
    """

    def __init__(self, staging: Staging):
        self._staging = staging
        self._changed = threading.Condition()
        self._pending: list[tuple[str, int]] = []  # (name, fd), in the order written
        self._syncing = False
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="jaxmerge-sync", daemon=True)
        self._thread.start()

    def written(self, name: str, fd: int) -> None:
        with self._changed:
            self._raise_failure()
            self._pending.append((name, fd))
            self._changed.notify_all()

    def drain(self) -> None:
        with self._changed:
            while (self._pending or self._syncing) and self._error is None:
                self._changed.wait()
            self._raise_failure()

    def close(self) -> None:
        """Journals what is already written (unless a sync failed), then stops the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:  # closed, and nothing left to journal
                    return
                batch, self._pending, self._syncing = self._pending, [], True
            try:
                for fd in dict.fromkeys(fd for _, fd in batch):
                    os.fdatasync(fd)
                for name, _ in batch:
                    self._staging.mark_done(name)
            except BaseException as e:  # noqa: BLE001 - handed to the writer's thread
                with self._changed:
                    self._error, self._syncing = e, False
                    self._changed.notify_all()
                return
            with self._changed:
                self._syncing = False
                self._changed.notify_all()


def params_header(params: dict[str, ParamInfo]) -> dict:
    return {n: [list(p.shape), p.dtype.name] for n, p in params.items()}


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


_NAME = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*")


def check_tree_names(out: pathlib.Path, params: dict[str, ParamInfo]) -> None:
    """T5X and Orbax store `a/b/c` under the file/key `a.b.c`: names must map one to one."""
    seen: dict[str, str] = {}
    for name in params:
        if not _NAME.fullmatch(name):
            raise CheckpointError(
                f"{out}: parameter {name!r} is not a tree path (letters, digits, '_', '-', '.', "
                "'/' between non-empty keys)"
            )
        dotted = name.replace("/", ".")
        if dotted in seen:
            raise CheckpointError(
                f"{out}: parameters {seen[dotted]!r} and {name!r} would share the file {dotted}"
            )
        seen[dotted] = name
