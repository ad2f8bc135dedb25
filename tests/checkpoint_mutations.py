"""Mutations of checkpoint files for fuzzing the readers (tests/test_fuzz_readers.py).

A mutation is `(kind, which, at, payload)`: `which` picks a file, `at` a place in it, the
payload bytes what goes there. Byte mutations see files as bytes; `value` mutations parse the
metadata (JSON files, the T5X msgpack with its inline arrays, a safetensors header), replace
one value anywhere in the tree with an odd one (negative, huge, wrong type, a path outside)
and write it back, which reaches checks that random bytes rarely do.
"""

import json
import math
import pathlib
import re
import struct

import msgpack
from hypothesis import strategies as st

HUGE = (2**31, 2**32 + 1, 2**40, 2**60, 2**63 - 1, 2**64 - 1)
ODD_VALUES = [
    -1, 0, 1, 7, 2**31, 2**40, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, math.nan, True, None,
    "", "x", "float32", "bfloat16", "uint16", "|O", "../../..", "/etc",
    [], [-1], [0, 2**62], [2**40, 2**40], [1] * 70, ["a"], {}, {"driver": "zarr"},
]  # fmt: skip
JSON_FILES = (".zarray", "_METADATA", "_CHECKPOINT_METADATA", "model.safetensors.index.json")
MSGPACK_FILE = "checkpoint"
# Files that say what the data is: chosen five times as often as data files.
METADATA_FILES = (*JSON_FILES, MSGPACK_FILE, "manifest.ocdbt")


def _pos(data: bytes, at: int) -> int:
    return at % (len(data) + 1)


def _flip(data: bytes, at: int, payload: bytes) -> bytes:
    i = at % len(data) if data else 0
    return data[:i] + bytes([data[i] ^ (payload[0] or 1)]) + data[i + 1 :] if data else data


def _replace_number(data: bytes, at: int, payload: bytes) -> bytes:
    """One run of digits (a shape, offset or length in text) becomes a huge or odd number."""
    runs = list(re.finditer(rb"\d+", data))
    if not runs:
        return data
    run = runs[at % len(runs)]
    odd = [str(h).encode() for h in HUGE] + [b"-1", b"-8", b"0", b"1e309", b"2.5", b'"7"']
    return data[: run.start()] + odd[payload[0] % len(odd)] + data[run.end() :]


def _leaf_paths(tree, prefix=()):
    """Paths to every value inside nested dicts and lists (the containers included)."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaf_paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaf_paths(value, (*prefix, i))


def _spread(n: int, size: int) -> int:
    """n mod size, scrambled: hypothesis draws small numbers often, which would otherwise
    always pick the first values of a tree."""
    return (n * 2654435761 + (n >> 3)) % size


def _replace_value(tree, at: int, payload: bytes):
    paths = list(_leaf_paths(tree))
    path = paths[_spread(at, len(paths))]
    value = ODD_VALUES[_spread(sum(payload) + len(payload), len(ODD_VALUES))]
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


def _open_ext(code, data):
    """msgpack ExtTypes (T5X inline arrays) opened up, so their shape and dtype are values."""
    try:
        return {"__ext__": code, "value": msgpack.unpackb(data, strict_map_key=False)}
    except ValueError:
        return msgpack.ExtType(code, data)


def _close_ext(tree):
    if (
        isinstance(tree, dict)
        and set(tree) == {"__ext__", "value"}
        and isinstance(tree["__ext__"], int)
    ):
        return msgpack.ExtType(tree["__ext__"], msgpack.packb(_close_ext(tree["value"])))
    if isinstance(tree, dict):
        return {k: _close_ext(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_close_ext(v) for v in tree]
    return tree


def _mutate_value(name: str, data: bytes, at: int, payload: bytes) -> bytes:
    """One value in the metadata `name` holds replaced by an odd one; other files unchanged."""
    base = pathlib.PurePath(name).name
    try:
        if base in JSON_FILES:
            return json.dumps(_replace_value(json.loads(data), at, payload)).encode()
        if base == MSGPACK_FILE:
            tree = msgpack.unpackb(data, ext_hook=_open_ext, strict_map_key=False)
            tree = _replace_value(tree, at, payload)
            return msgpack.packb(_close_ext(tree))
        if base.endswith(".safetensors"):
            (n,) = struct.unpack("<Q", data[:8])
            header = _replace_value(json.loads(data[8 : 8 + n]), at, payload)
            text = json.dumps(header).encode()
            return struct.pack("<Q", len(text)) + text + data[8 + n :]
    except (ValueError, struct.error, msgpack.UnpackException, TypeError, IndexError):
        pass  # already damaged beyond parsing: leave it so
    return data


# kind -> f(file name, data, at, payload) -> new data, or None to remove the file
MUTATIONS = {
    "flip": lambda name, d, at, b: _flip(d, at, b),
    "overwrite": lambda name, d, at, b: d[: _pos(d, at)] + b + d[_pos(d, at) + len(b) :],
    "insert": lambda name, d, at, b: d[: _pos(d, at)] + b + d[_pos(d, at) :],
    "delete": lambda name, d, at, b: d[: _pos(d, at)] + d[_pos(d, at) + 1 + len(b) :],
    "truncate": lambda name, d, at, b: d[: _pos(d, at)],
    "length_field": lambda name, d, at, b: struct.pack("<Q", HUGE[at % len(HUGE)]) + d[8:],
    "huge_number": lambda name, d, at, b: _replace_number(d, at, b),
    "value": _mutate_value,
    "remove": lambda name, d, at, b: None,
}

mutation = st.tuples(
    st.sampled_from(sorted(MUTATIONS) + ["value"] * 3),  # structure-aware: a quarter
    st.integers(0, 2**20),  # which file (mod count) ...
    st.integers(0, 2**20),  # ... and where in it (mod length / number of values)
    st.binary(min_size=1, max_size=9),
)


def targets(files: dict) -> list[str]:
    """Every file once; files holding metadata (names, shapes, offsets, lengths) five times."""
    names = sorted(files)
    meta = [
        n for n in names if n.endswith(".safetensors") or pathlib.Path(n).name in METADATA_FILES
    ]
    return names + meta * 4


def mutate(files: dict[str, bytes], ops) -> dict[str, bytes | None]:
    """`files` (relative path -> bytes) after the mutations `ops`; None marks a removed file."""
    files = dict(files)
    names = targets(files)
    for kind, which, at, payload in ops:
        name = names[which % len(names)]
        if files[name] is not None:
            files[name] = MUTATIONS[kind](name, files[name], at, payload)
    return files
