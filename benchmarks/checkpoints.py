"""Checkpoint read/write throughput per format, next to the disk's own sequential speed.

    .venv/bin/python benchmarks/checkpoints.py [--size_gb 1.0] [--dir bench_output/checkpoints]

Measures, in one run on the same directory:
- disk: `dd`-style sequential write of one file (16 MiB blocks, then fsync) and read of it back
  after dropping it from the page cache (posix_fadvise DONTNEED; no root needed);
- per format: writing a ~size_gb float32 model of 64 MiB-ish tensors through
  `checkpoints.create(...).write(...)/.finalize()` (every write fsync'd, as the writers do),
  and reading it back, page cache dropped first, with `reader.read(name)` (single device) and
  `reader.read(name, NamedSharding)` over 8 CPU devices.
Prints a markdown table (MB/s, and the disk's speed divided by the format's). Goal: reads
within 1.5x of the disk, writes within 2x. Besides each format's default codec (what T5X and
Orbax themselves write) it measures gzip level 0 / uncompressed variants, to separate the
cost of (de)compression on this machine's cores from the cost of I/O. Weights are random
normal float32, which hardly compress, like real weights.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxmerge import checkpoints  # noqa: E402
from jaxmerge.checkpoints import ParamInfo  # noqa: E402

BLOCK = 16 << 20


def drop_cache(root: pathlib.Path) -> None:
    """Evicts every file under root from the page cache (after fsync, so pages are clean)."""
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_speed(directory: pathlib.Path, nbytes: int) -> tuple[float, float]:
    """(write, read) bytes/s of one sequential file, like dd bs=16M conv=fsync."""
    path = directory / "dd.bin"
    block = np.random.default_rng(0).integers(0, 256, BLOCK, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for _ in range(nbytes // BLOCK):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
    write = nbytes / (time.perf_counter() - start)
    drop_cache(path)
    buf = bytearray(BLOCK)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    read = nbytes / (time.perf_counter() - start)
    path.unlink()
    return write, read


def make_model(nbytes: int) -> dict[str, np.ndarray]:
    """~nbytes of float32 tensors shaped like big transformer matrices (4096 x 4096 = 64 MiB)."""
    rng = np.random.default_rng(0)
    n = max(1, nbytes // (4096 * 4096 * 4))
    model = {}
    for i in range(n):
        shape = (4096, 4096) if i % 2 == 0 else (2048, 8192)
        model[f"encoder/layers_{i}/mlp/wi/kernel"] = rng.standard_normal(shape, np.float32)
    model["encoder/encoder_norm/scale"] = rng.standard_normal((4096,), np.float32)
    return model


VARIANTS = {
    # label: (format, writer keyword arguments beyond create()'s)
    "t5x (gzip 1, as T5X)": ("t5x", {}),
    "t5x (gzip 0)": ("t5x", {"compression_level": 0}),
    "orbax (zstd 1, as Orbax)": ("orbax", {}),
    "orbax (uncompressed)": ("orbax", {"compression": None}),
    "safetensors": ("safetensors", {}),
}
_WRITER_CLASSES = {
    "t5x": checkpoints.t5x.Writer,
    "orbax": checkpoints.orbax.Writer,
    "safetensors": checkpoints.safetensors.Writer,
}


def bench_format(fmt, options, model, directory, mesh):
    out = directory / fmt
    shutil.rmtree(out, ignore_errors=True)
    total = sum(a.nbytes for a in model.values())
    infos = {n: ParamInfo(a.shape, a.dtype) for n, a in model.items()}
    start = time.perf_counter()
    if options:  # a non-default codec: the format's writer class directly
        writer = _WRITER_CLASSES[fmt](out, infos, step=1, **options)
    else:
        writer = checkpoints.create(out, fmt, infos, step=1)
    for name, array in model.items():
        writer.write(name, array)
    writer.finalize()
    results = {"write": total / (time.perf_counter() - start)}
    results["disk_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    for label in ("host", "device", "sharded"):
        drop_cache(out)
        start = time.perf_counter()
        with checkpoints.open(out) as reader:
            for name, info in reader.params.items():
                if label == "host":
                    reader.read_numpy(name)
                    continue
                spec = P("data") if label == "sharded" and info.shape[0] % 8 == 0 else P()
                x = reader.read(name, NamedSharding(mesh, spec) if label == "sharded" else None)
                x.block_until_ready()
                del x
        results[label] = total / (time.perf_counter() - start)
    shutil.rmtree(out)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size_gb", type=float, default=1.0)
    parser.add_argument("--dir", default="bench_output/checkpoints")
    parser.add_argument("--formats", nargs="+", default=list(checkpoints.FORMATS))
    args = parser.parse_args(argv)
    directory = pathlib.Path(args.dir).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    nbytes = int(args.size_gb * 2**30)
    model = make_model(nbytes)
    total = sum(a.nbytes for a in model.values())
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    disk_write, disk_read = disk_speed(directory, total // BLOCK * BLOCK)
    mb = 1e6
    print(
        f"model: {len(model)} float32 tensors, {total / 2**30:.2f} GiB; dir {directory}; "
        f"{os.cpu_count()} CPUs, {jax.device_count()} devices"
    )
    print()
    print(
        "| format | write MB/s | disk write / write | read to host MB/s | disk read / read "
        "| read to 1 device MB/s | sharded read, 8 devices MB/s | size / model |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| disk (dd, 16 MiB blocks) | {disk_write / mb:.0f} | 1.00 | {disk_read / mb:.0f} "
        "| 1.00 | | | |"
    )
    for label, (fmt, options) in VARIANTS.items():
        if fmt not in args.formats:
            continue
        r = bench_format(fmt, options, model, directory, mesh)
        print(
            f"| {label} | {r['write'] / mb:.0f} | {disk_write / r['write']:.2f} "
            f"| {r['host'] / mb:.0f} | {disk_read / r['host']:.2f} | {r['device'] / mb:.0f} "
            f"| {r['sharded'] / mb:.0f} | {r['disk_bytes'] / total:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
