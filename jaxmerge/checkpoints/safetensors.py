"""Hugging Face safetensors: `model.safetensors`, or shards + `model.safetensors.index.json`.

File layout (https://huggingface.co/docs/safetensors): 8 bytes little-endian u64 N, then N
bytes of JSON header `{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]},
"__metadata__": {...}}`, then the data; offsets count from the first byte after the header.
The index maps each tensor to its shard: `{"metadata": {"total_size": bytes},
"weight_map": {name: file}}`.

The reader parses headers itself (validating every offset against the file size) and maps
each tensor copy-on-write while it is read: a whole tensor is handed to JAX as the mapping
itself (zero-copy on CPU), a shard of one is copied out of it, so only that shard's bytes
reach host memory. Nothing stays mapped after the arrays are dropped.
The writer lays out every file's header from the declared parameters up front, preallocates
the files, and streams each tensor to its offset.
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
import struct
from collections.abc import Iterator

import jax
import ml_dtypes
import numpy as np

from jaxmerge import failpoints
from jaxmerge.checkpoints.metadata import Index, ParamInfo, check_array, params_header, parse_shape
from jaxmerge.checkpoints.reader_base import ReaderBase
from jaxmerge.checkpoints.shards import host_shards
from jaxmerge.checkpoints.staging import Staging, barrier, is_primary, write_file
from jaxmerge.checkpoints.sync_behind import SyncBehind
from jaxmerge.errors import CheckpointError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20  # the safetensors library refuses larger headers too

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}

# Files copied from the reference directory next to the weights (what from_pretrained reads).
REFERENCE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "preprocessor_config.json",
)


def is_safetensors_dir(path: pathlib.Path) -> bool:
    return (path / SINGLE).is_file() or (path / INDEX).is_file()


def _read_header(file: pathlib.Path) -> tuple[dict, int, int]:
    """(tensors, data start, file size) of one .safetensors file; CheckpointError if malformed."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{file}: truncated: {size} bytes, no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"{file}: header length {n} runs past the end of the file ({size} bytes)"
                )
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing safetensors file") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: header is not valid JSON ({e.msg})") from None
    except (UnicodeDecodeError, RecursionError) as e:  # not UTF-8; nested past Python's limit
        raise CheckpointError(f"{file}: header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: header is not a JSON object")
    header.pop("__metadata__", None)
    start = 8 + n
    data_bytes = size - start
    tensors = {}
    for name, entry in header.items():
        try:
            dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: tensor {name}: malformed header entry") from None
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise CheckpointError(f"{file}: tensor {name}: unsupported dtype {dtype_name!r}")
        info = ParamInfo(parse_shape(shape, f"{file}: tensor {name}"), _DTYPES[dtype_name])
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (begin, end)):
            raise CheckpointError(f"{file}: tensor {name}: data_offsets are not integers")
        if not 0 <= begin <= end or end > data_bytes:
            raise CheckpointError(
                f"{file}: tensor {name}: data_offsets [{begin}, {end}] run past the end of the "
                f"data ({data_bytes} bytes)"
            )
        if end - begin != info.nbytes:
            raise CheckpointError(
                f"{file}: tensor {name}: data_offsets span {end - begin} bytes, but "
                f"{dtype_name}{list(info.shape)} needs {info.nbytes}"
            )
        tensors[name] = (info, start + begin)
    return tensors, start, size


class Reader(ReaderBase):
    """Reads a Hugging Face safetensors model lazily, one tensor (or one shard) at a time."""

    format = "safetensors"
    maps_files = True  # whole tensors are read by mapping the file (see _mapped)

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.step = None
        index = self.path / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_bytes())["weight_map"]
            except (ValueError, KeyError, TypeError, RecursionError):  # ValueError: JSON, UTF-8
                raise CheckpointError(f"{index}: not a safetensors index (no weight_map)") from None
            if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) and f and pathlib.PurePath(f).name == f
                for f in weight_map.values()
            ):
                raise CheckpointError(f"{index}: weight_map is not {{tensor: file name}}")
            files = list(dict.fromkeys(weight_map.values()))
        elif (self.path / SINGLE).is_file():
            weight_map, files = None, [SINGLE]
        else:
            raise CheckpointError(f"{self.path}: neither {SINGLE} nor {INDEX} found")
        self._where: dict[str, tuple[pathlib.Path, int]] = {}
        self.params: dict[str, ParamInfo] = {}
        for file_name in files:
            file = self.path / file_name
            if not file.is_file():
                raise CheckpointError(f"{index}: names shard {file_name}, which is missing")
            tensors, _, _ = _read_header(file)
            for name, (info, offset) in tensors.items():
                if weight_map is not None and weight_map.get(name) != file_name:
                    continue
                self.params[name] = info
                self._where[name] = (file, offset)
        if weight_map is not None:
            for name, file_name in weight_map.items():
                if name not in self.params:
                    raise CheckpointError(f"{self.path / file_name}: tensor {name} is missing")

    def _mapped(self, name: str, read_ahead: bool = True) -> np.ndarray:
        """The whole tensor mapped copy-on-write from the file: no copy, no zero-filled pages.

        On CPU, jax.device_put aliases a 64-byte-aligned host array, so the merge kernel
        reads the page cache directly. XLA cannot take over such a buffer: donating it
        costs a copy (so the merge does not donate these; `maps_files`), and anything
        written to it would stay in the private mapping. The mapping lives as long as the
        array. Offsets were validated against the file size when the header was read.
        """
        file, offset = self._where[name]
        info = self.params[name]
        if info.nbytes == 0:
            return np.empty(info.shape, info.dtype)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        with open(file, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset + info.nbytes:  # shrank since opened
                raise CheckpointError(f"{file}: tensor {name}: file ends early")
            mapping = mmap.mmap(
                f.fileno(),
                offset + info.nbytes - start,
                flags=mmap.MAP_PRIVATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=start,
            )
        if read_ahead:  # the whole tensor will be read: start now, not fault by fault
            mapping.madvise(mmap.MADV_WILLNEED)
        data = np.frombuffer(
            mapping, info.dtype, count=int(np.prod(info.shape)), offset=offset - start
        )
        return data.reshape(info.shape)

    def _read_slices(self, name: str, indices: list[Index]) -> Iterator[np.ndarray]:
        info = self.params[name]
        for index in indices:
            failpoints.hit("safetensors.read")
            if all(s.start == 0 and s.stop == n for s, n in zip(index, info.shape, strict=True)):
                yield self._mapped(name)
            else:
                yield np.array(self._mapped(name, read_ahead=False)[index])  # this shard only

    def _check(self, name: str) -> None:
        if name not in self.params:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")

    def read_numpy(self, name: str) -> np.ndarray:
        self._check(name)
        info = self.params[name]
        file, offset = self._where[name]
        out = np.empty(info.shape, info.dtype)
        buf = memoryview(out.reshape(-1).view(np.uint8))
        with open(file, "rb", buffering=0) as f:
            f.seek(offset)
            got = 0
            while got < info.nbytes:
                n = f.readinto(buf[got:])
                if not n:
                    raise CheckpointError(f"{file}: tensor {name}: file ends early")
                got += n
        return out

    def close(self) -> None:
        pass  # nothing stays open: each read maps and unmaps its own tensor


def _plan_files(params: dict[str, ParamInfo], max_shard_bytes: int) -> list[list[str]]:
    """Parameters grouped, in order, into files of at most max_shard_bytes (or one tensor)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, info in params.items():
        if groups[-1] and size + info.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += info.nbytes
    return groups


def _header_bytes(names: list[str], params: dict[str, ParamInfo]) -> tuple[bytes, dict[str, int]]:
    """The 8-byte length + JSON header (padded to 64 bytes), and each tensor's data offset."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offsets, at = {}, 0
    for name in names:
        info = params[name]
        header[name] = {
            "dtype": _NAMES[info.dtype],
            "shape": list(info.shape),
            "data_offsets": [at, at + info.nbytes],
        }
        offsets[name] = at
        at += info.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    # Padded (spaces, as the format allows) so the data starts 64-byte aligned: tensors whose
    # offsets are multiples of 64 then map straight into XLA:CPU buffers (see Reader._mapped).
    text += b" " * (-(8 + len(text)) % 64)
    return struct.pack("<Q", len(text)) + text, offsets


class Writer:
    """Streams tensors into preallocated safetensors files under OUT.jaxmerge-tmp/."""

    format = "safetensors"

    def __init__(
        self,
        path,
        params: dict[str, ParamInfo],
        *,
        step: int = 0,
        reference=None,
        max_shard_bytes: int = 5 * 10**9,
        resume: bool = False,
        overwrite: bool = False,
        run_key: str | None = None,
    ):
        for name, info in params.items():
            if info.dtype not in _NAMES:
                raise CheckpointError(f"{path}: parameter {name}: safetensors has no {info.dtype}")
        self.path = pathlib.Path(path).absolute()
        self.params = dict(params)
        self._fds: dict[pathlib.Path, int] = {}
        self._sync: SyncBehind | None = None
        self.reference = None if reference is None else pathlib.Path(reference)
        groups = _plan_files(self.params, max_shard_bytes)
        if len(groups) == 1:
            file_names = [SINGLE]
        else:
            file_names = [
                f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, 1 + len(groups))
            ]
        header = {
            "format": self.format,
            "params": params_header(self.params),
            "run": run_key,
            "files": file_names,
        }
        self._staging = Staging(self.path, header, resume=resume, overwrite=overwrite)
        self.done = self._staging.done
        self._target: dict[str, tuple[pathlib.Path, int]] = {}
        self._files = []
        for file_name, names in zip(file_names, groups, strict=True):
            file = self._staging.tmp / file_name
            head, offsets = _header_bytes(names, self.params)
            total = len(head) + sum(self.params[n].nbytes for n in names)
            if is_primary() and not file.exists():
                with open(file, "wb") as f:
                    f.write(head)
                    f.truncate(total)
                    os.fsync(f.fileno())
                failpoints.hit("safetensors.preallocated")
            self._files.append(file)
            for name in names:
                self._target[name] = (file, len(head) + offsets[name])
        self._weight_map = {
            n: f for f, names in zip(file_names, groups, strict=True) for n in names
        }
        barrier(f"preallocated:{self.path}")
        self._fds = {file: os.open(file, os.O_WRONLY) for file in self._files}
        # One process: fdatasync and journal on a thread of their own, behind the writes.
        self._sync = SyncBehind(self._staging) if jax.process_count() == 1 else None

    def write(self, name: str, array) -> None:
        if name not in self.params:
            raise CheckpointError(f"{self.path}: parameter {name} was not declared in create()")
        info = self.params[name]
        check_array(str(self.path), name, info, array)
        file, offset = self._target[name]
        fd = self._fds[file]
        for index, data in host_shards(array):
            _write_block(fd, offset, info, index, np.ascontiguousarray(data))
        if self._sync is not None:
            self._sync.written(name, fd)
        else:
            os.fdatasync(fd)
            self._staging.mark_done(name)

    def finalize(self, extra_files: dict[str, bytes] | None = None) -> pathlib.Path:
        if self._sync is not None:
            self._sync.drain()
        missing = [n for n in self.params if n not in self.done]
        if missing:
            raise CheckpointError(
                f"{self.path}: finalize before writing {len(missing)} parameters, e.g. {missing[0]}"
            )
        tmp = self._staging.tmp
        if not is_primary():
            return self._staging.commit()
        if len(self._files) > 1:
            index = {
                "metadata": {"total_size": sum(p.nbytes for p in self.params.values())},
                "weight_map": self._weight_map,
            }
            write_file(tmp / INDEX, json.dumps(index, indent=2).encode())
            failpoints.hit("safetensors.index_written")
        if self.reference is not None:
            for file_name in REFERENCE_FILES:
                if (self.reference / file_name).is_file():
                    write_file(tmp / file_name, (self.reference / file_name).read_bytes())
        self._staging.write_files(extra_files)
        return self._staging.commit()

    def abort(self) -> None:
        self._close_files()
        self._staging.abort()

    def close(self) -> None:
        """Releases the output lock, keeping what is written for a resume (after a failure)."""
        self._close_files()
        self._staging.close()

    def _close_files(self) -> None:
        if self._sync is not None:
            self._sync.close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def _write_block(fd: int, offset: int, info: ParamInfo, index: Index, block: np.ndarray) -> None:
    """Writes `block` (the C-ordered sub-array at `index`) into the tensor stored at `offset`.

    Dimensions from the first one the block covers whole onwards are contiguous in the file;
    one pwrite per run, e.g. one per row of a column shard, one in all for a row shard.
    """
    shape, itemsize = info.shape, info.dtype.itemsize
    first_whole = len(shape)
    while first_whole > 0 and index[first_whole - 1] == slice(0, shape[first_whole - 1], 1):
        first_whole -= 1
    if first_whole == 0:  # the whole tensor
        _pwrite_all(fd, block, offset)
        return
    strides = [int(np.prod(shape[d + 1 :], dtype=np.int64)) for d in range(len(shape))]
    outer = first_whole - 1  # the runs are indexed by the dimensions before this one
    for local in np.ndindex(*block.shape[:outer]):
        start = [s.start for s in index]
        for d, i in enumerate(local):
            start[d] += i
        element = sum(a * b for a, b in zip(start, strides, strict=True))
        _pwrite_all(fd, block[local], offset + element * itemsize)


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(data.reshape(-1).view(np.uint8))
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    failpoints.hit("safetensors.pwrite")
