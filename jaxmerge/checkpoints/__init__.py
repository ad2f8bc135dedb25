"""Checkpoints in and out: `open(path) -> Reader`, `create(path, format, params) -> Writer`.

Formats (see docs/checkpoints.md):
- "t5x": T5X legacy, `checkpoint_<N>/checkpoint` (msgpack) + one gzip zarr array per parameter.
- "orbax": an Orbax PyTree directory, plain or T5X's `checkpoint_<N>/state/` (OCDBT).
- "safetensors": Hugging Face `model.safetensors`, or shards + `model.safetensors.index.json`.

Every Reader has the same surface: `path`, `format`, `step`, `params` (name -> ParamInfo, sorted
by name for t5x/orbax, file order for safetensors), `read(name, sharding)`, `read_numpy(name)`,
`close()`; `read_sample(reader, name)` reads a small block of one parameter. Every Writer:
`path`, `done`, `write(name, array)`, `finalize(extra_files)`, `abort()`, `close()` (releases
the output lock after a failure; what is written stays for a resume).

The pieces the formats share: `metadata` (ParamInfo, checked shapes/dtypes/names), `shards`
(sharded assembly and chunking), `reader_base`, `staging` (staging directory, journal, output
lock, commit), `sync_behind`, `tensorstore_arrays`. May import: jax, numpy, tensorstore,
msgpack, jaxmerge.errors and jaxmerge.failpoints; nothing else of jaxmerge.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from jaxmerge.checkpoints import orbax, safetensors, t5x
from jaxmerge.checkpoints.metadata import SUPPORTED_DTYPES, ParamInfo
from jaxmerge.checkpoints.staging import remove_stale_lock
from jaxmerge.checkpoints.tensorstore_arrays import free_memory
from jaxmerge.errors import CheckpointError

__all__ = [
    "FORMATS",
    "ParamInfo",
    "create",
    "detect_format",
    "free_memory",
    "open",
    "read_sample",
    "remove_stale_lock",
    "resolve",
]

FORMATS = ("t5x", "orbax", "safetensors")
_READERS = {"t5x": t5x.Reader, "orbax": orbax.Reader, "safetensors": safetensors.Reader}
_WRITERS = {"t5x": t5x.Writer, "orbax": orbax.Writer, "safetensors": safetensors.Writer}
_STEP_DIR = re.compile(r"(?:checkpoint_)?(\d+)")

Reader = t5x.Reader | orbax.Reader | safetensors.Reader
Writer = t5x.Writer | orbax.Writer | safetensors.Writer


def _format_of(path: pathlib.Path) -> str | None:
    """The format of this very directory, or None. T5X's own order: state/ before msgpack."""
    if safetensors.is_safetensors_dir(path):
        return "safetensors"
    if orbax.item_dir(path) is not None:
        return "orbax"
    if t5x.is_t5x_dir(path):
        return "t5x"
    return None


def resolve(path) -> tuple[str, pathlib.Path]:
    """(format, checkpoint dir) for `path`; a directory of checkpoint_<N>/ or <N>/ steps
    resolves to its highest step (like T5X's mode='latest'). CheckpointError if none."""
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        raise CheckpointError(f"{path}: pass the model directory, not a .safetensors file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; expected a checkpoint directory")
    fmt = _format_of(path)
    if fmt is not None:
        return fmt, path
    steps = []
    for child in path.iterdir():
        m = _STEP_DIR.fullmatch(child.name)
        if m and child.is_dir() and _format_of(child) in ("t5x", "orbax"):
            steps.append((int(m.group(1)), child))
    if steps:
        child = max(steps)[1]
        return _format_of(child), child
    raise CheckpointError(
        f"{path}: no recognisable checkpoint (looked for {safetensors.SINGLE}, "
        f"{safetensors.INDEX}, Orbax _METADATA, T5X 'checkpoint' msgpack, checkpoint_<N>/)"
    )


def detect_format(path) -> str:
    """One of FORMATS for the checkpoint at `path`; CheckpointError naming the path if none."""
    return resolve(path)[0]


def open(path, format: str | None = None) -> Reader:  # noqa: A001 - the module's verb
    """A Reader for the checkpoint at `path` (format detected unless given)."""
    if format is None:
        format, path = resolve(path)
    elif format not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {format!r}; one of {FORMATS}")
    else:
        path = pathlib.Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint directory")
        if format in ("t5x", "orbax") and _format_of(path) is None:
            _, path = resolve(path)
        found = _format_of(path)
        if found is not None and found != format and _format_of_as(path, format) is None:
            raise CheckpointError(f"{path}: not in {format} format (it looks like {found})")
    return _READERS[format](path)


def _format_of_as(path: pathlib.Path, format: str) -> str | None:
    """`format` if `path` holds that format's marker file (a directory may hold several)."""
    markers = {
        "safetensors": safetensors.is_safetensors_dir,
        "orbax": lambda p: orbax.item_dir(p) is not None,
        "t5x": t5x.is_t5x_dir,
    }
    return format if markers[format](path) else None


def read_sample(reader: Reader, name: str, max_elements: int = 4096) -> np.ndarray:
    """A block of at most `max_elements` entries from the middle of parameter `name`.

    Only that block is read (a slice of the file, or the chunks it touches), so plausibility
    checks can look at a few values of a huge tensor cheaply; the same block every time.
    """
    info = reader.params[name]
    shape = info.shape
    if 0 in shape:
        return np.zeros(shape, info.dtype)
    index, room = [], max(1, max_elements)
    for n in reversed(shape):  # the trailing dimensions first: contiguous in every format
        take = max(1, min(n, room))
        start = (n - take) // 2
        index.append(slice(start, start + take, 1))
        room = max(1, room // take)
    (block,) = reader._read_slices(name, [tuple(reversed(index))])
    return np.asarray(block)


def create(
    path,
    format: str,
    params: dict[str, ParamInfo],
    *,
    step: int = 0,
    reference=None,
    max_shard_bytes: int = 5 * 10**9,
    resume: bool = False,
    overwrite: bool = False,
    run_key: str | None = None,
) -> Writer:
    """A Writer that will produce `path` (t5x/orbax: path/checkpoint_<step>/; safetensors: path/).

    Data goes to the temporary sibling `path.jaxmerge-tmp/` until finalize(); resume=True keeps
    the parameters a killed run with the same arguments and `run_key` already wrote
    (`writer.done`). Only one writer of `path` at a time: another gets a CheckpointError.
    """
    if format not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {format!r}; one of {FORMATS}")
    if reference is not None and not pathlib.Path(reference).is_dir():
        raise CheckpointError(f"{reference}: reference directory does not exist")
    for name, info in params.items():
        if info.dtype not in SUPPORTED_DTYPES:
            raise CheckpointError(f"{path}: parameter {name}: unsupported dtype {info.dtype.name}")
    return _WRITERS[format](
        path,
        params,
        step=step,
        reference=reference,
        max_shard_bytes=max_shard_bytes,
        resume=resume,
        overwrite=overwrite,
        run_key=run_key,
    )
