"""What a checkpoint says about its parameters, checked: `ParamInfo` (shape and dtype),
the shapes, dtypes and steps a file may claim, and tree names that map one to one onto
T5X/Orbax file names. Every failure is a CheckpointError naming the file."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re

import ml_dtypes
import numpy as np

from jaxmerge.errors import CheckpointError

Index = tuple[slice, ...]


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


def params_header(params: dict[str, ParamInfo]) -> dict:
    return {n: [list(p.shape), p.dtype.name] for n, p in params.items()}


def check_array(where: str, name: str, info: ParamInfo, array) -> None:
    """CheckpointError unless `array` has the shape and dtype promised for `name` in create()."""
    if tuple(array.shape) != info.shape or np.dtype(array.dtype) != info.dtype:
        raise CheckpointError(
            f"{where}: parameter {name}: got {np.dtype(array.dtype).name}{list(array.shape)}, "
            f"create() declared {info.dtype.name}{list(info.shape)}"
        )


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
