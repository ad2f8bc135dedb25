"""`jaxmerge inspect PATH`: format, step, parameter count, total bytes, names/shapes/dtypes.

Reads only metadata (msgpack, _METADATA + zarr headers, safetensors headers), never tensor
data, so it is quick on any size of model. `--json` prints one JSON object for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="checkpoint dir: T5X checkpoint_<N>, Orbax, or HF model")
    parser.add_argument(
        "--input_format", choices=("t5x", "orbax", "safetensors"), help="skip format detection"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def summary(reader) -> dict:
    params = reader.params
    return {
        "path": str(reader.path),
        "format": reader.format,
        "step": reader.step,
        "num_params": len(params),
        "num_elements": sum(int(_prod(p.shape)) for p in params.values()),
        "total_bytes": sum(p.nbytes for p in params.values()),
        "params": [
            {"name": n, "shape": list(p.shape), "dtype": p.dtype.name} for n, p in params.items()
        ],
    }


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError


def format_table(info: dict) -> str:
    lines = [
        f"path:       {info['path']}",
        f"format:     {info['format']}",
        f"step:       {info['step']}",
        f"parameters: {info['num_params']} tensors, {info['num_elements']:,} elements",
        f"size:       {_human(info['total_bytes'])} ({info['total_bytes']:,} bytes)",
        "",
    ]
    rows = [
        (p["name"], "(" + ", ".join(map(str, p["shape"])) + ")", p["dtype"]) for p in info["params"]
    ]
    header = ("name", "shape", "dtype")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from jaxmerge import checkpoints

    with checkpoints.open(args.path, format=args.input_format) as reader:
        info = summary(reader)
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(info))
    return 0
