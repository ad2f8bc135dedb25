"""The streaming executor: `merge_checkpoints(config)` runs one merge end to end."""

import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from jaxmerge import checkpoints, failpoints, sharding
from jaxmerge.errors import writing
from jaxmerge.merging import preflight
from jaxmerge.merging.config import MergeConfig
from jaxmerge.merging.kernels import Merger
from jaxmerge.merging.manifest import finished, manifest, operative_config, run_key
from jaxmerge.merging.nonfinite import NonFiniteGuard
from jaxmerge.merging.plan import default_budget, group_by_bytes, make_plan
from jaxmerge.merging.thresholds import global_thresholds, tensor_thresholds, warm_up_host_select
from jaxmerge.methods import get_method, hparam_defaults, select


class WriteBehind:
    """`write(name, array)` on a thread of its own, so writing overlaps reading and merging.

    At most `limit` bytes of merged parameters wait to be written; with limit 0 every
    write happens inline (several processes: the writers' barriers must stay in step).
    A failed write is raised at the next `write` or on leaving the block; leaving the
    block waits for every write, so nothing is written after the merge has returned.
    """

    def __init__(self, write: Callable[[str, jax.Array], None], limit: int):
        self._write, self.limit = write, limit
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jaxmerge-write") if limit else None
        self._pending: list = []  # (future, bytes), oldest first

    def write(self, name: str, array) -> None:
        if self._pool is None:
            self._write(name, array)
            return
        self._pending.append((self._pool.submit(self._write, name, array), array.nbytes))
        self._collect(self.limit)

    def _collect(self, limit: int) -> None:
        """Takes finished writes off the queue, and waits until at most `limit` bytes wait."""
        while self._pending and (
            self._pending[0][0].done() or sum(b for _, b in self._pending) > limit
        ):
            future, _ = self._pending.pop(0)
            future.result()  # a failed write raises here

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is None:
            return
        try:
            if exc[0] is None:
                self._collect(0)
            for future, _ in self._pending:  # already failing: keep that error, stop writing
                future.cancel()
        finally:
            self._pool.shutdown(wait=True)


class _Progress:
    """A rich progress bar over bytes, or nothing when quiet or not on a terminal."""

    def __init__(self, quiet: bool):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.bar.start()

    def task(self, description: str, total: int):
        return None if self.bar is None else self.bar.add_task(description, total=total)

    def advance(self, task, amount: int) -> None:
        if self.bar is not None and task is not None:
            self.bar.advance(task, amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def merge_checkpoints(config: MergeConfig, *, quiet: bool = False, log=print) -> pathlib.Path:
    """Runs one merge end to end; returns the path of the finished checkpoint."""
    start = time.perf_counter()
    hparams = preflight.check_config(config)  # before any file is opened
    spec = get_method(config.method)
    output = pathlib.Path(config.output).resolve()

    base = checkpoints.open(config.base, config.input_format) if spec.needs_base else None
    if base is None and config.base is not None and not spec.needs_base:
        log(f"note: {config.method} does not use a base; ignoring --base {config.base}")
    experts = [checkpoints.open(p, config.input_format) for p in config.experts]
    readers = ([("base", base)] if base is not None else []) + [
        (f"expert {i}", r) for i, r in enumerate(experts)
    ]
    key = run_key(config, readers)
    if not config.overwrite and output.is_dir() and any(output.iterdir()):
        # Before the checks that read weights and the warm-ups: a finished merge is done.
        done = finished(output, key)  # preflight let a finished merge's OUT through
        for _, reader in readers:
            reader.close()
        if done is None:
            raise preflight.output_exists(output)
        log(f"already merged: {done} holds this merge (same inputs and settings)")
        return done
    preflight.check_inputs(config, base, experts)
    plan = make_plan(config, base, experts)
    preflight.check_shared_base(config, base, experts)
    mesh = sharding.make_mesh()
    if spec.global_trim and mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu":
        warm_up_host_select({np.dtype(info.dtype) for info in base.params.values()})
    budget = config.memory_budget or default_budget(jax.local_devices())
    with writing(output):
        writer = checkpoints.create(
            output,
            plan.output_format,
            plan.params,
            step=plan.step,
            reference=plan.reference if plan.output_format == "safetensors" else None,
            max_shard_bytes=config.max_shard_bytes,
            resume=True,
            run_key=key,  # resumes only a killed run of this same merge
            overwrite=config.overwrite,
        )
    progress = _Progress(quiet)
    try:
        merger = Merger(config, plan, mesh, donate=not any(r.maps_files for _, r in readers))
        input_bytes = {name: sum(r.params[name].nbytes for _, r in readers) for name in plan.names}

        guard = NonFiniteGuard(
            [(f"expert {i}", e.path) for i, e in enumerate(experts)]
            + ([("base", base.path)] if base else []),
            output,
            allow_inputs=config.allow_nonfinite,
        )
        checked: set[tuple[str, int]] = set()  # (parameter, input) checked for NaN/Inf
        trim = hparams.get("trim", "global") if spec.global_trim else None
        density = hparams.get("density", hparam_defaults(spec).get("density"))
        # TIES histograms every |τᵢ| = |θᵢ − θ₀| anyway, and a NaN or Inf in an expert or
        # the base makes some |τᵢ| non-finite, counted in the top bins: only then are that
        # parameter's inputs checked one by one (to name the file), instead of every input
        # on the reading threads (a quarter of the selection's cost).
        checks_by_histogram = trim is not None and density > 0  # k ≥ 1: histograms are made

        def check_by_histogram(name, high, expert_arrays, base_array) -> None:
            if high is None or high[:, select.NONFINITE_HIGH_DIGIT :].any():
                for which, array in enumerate([*expert_arrays, base_array]):
                    guard.check_input(name, which, array)

        def read(names: Sequence[str], description: str) -> Iterator:
            """Yields (name, expert arrays, base array); reads the next group meanwhile."""
            # A read briefly holds a host and a device copy: groups get a sixth of the budget,
            # and no group is read beside one that alone exceeds that (a huge parameter).
            limit = max(1, budget // 6)
            groups = group_by_bytes(names, input_bytes, limit)
            task = progress.task(description, sum(input_bytes[n] for n in names))

            def load(group):
                """Reads a group, the inputs of each parameter concurrently (decoding is CPU)."""
                out = []
                for name in group:
                    failpoints.hit("merge.read")
                    target = merger.sharding(name)
                    inputs = [*experts, *([base] if base else [])]

                    def read_checked(which, reader, name=name, target=target):
                        array = reader.read(name, target)
                        if checks_by_histogram:
                            return array
                        if (name, which) not in checked:  # on the first of a model's passes
                            guard.check_input(name, which, array)
                            checked.add((name, which))
                        return array

                    futures = [readers_pool.submit(read_checked, *r) for r in enumerate(inputs)]
                    arrays = [f.result() for f in futures]
                    out.append((name, arrays[: len(experts)], arrays[-1] if base else None))
                return out

            with ThreadPoolExecutor(1) as pool, ThreadPoolExecutor(len(readers)) as readers_pool:
                pending = pool.submit(load, groups[0]) if groups else None
                for i, group in enumerate(groups):
                    loaded, pending = pending.result(), None
                    following = groups[i + 1] if i + 1 < len(groups) else None
                    if following and sum(input_bytes[n] for n in group) <= limit:
                        pending = pool.submit(load, following)
                    loaded.reverse()
                    while loaded:  # hand each parameter over and drop our reference to it
                        name, arrays, base_array = loaded.pop()
                        yield name, arrays, base_array
                        del arrays, base_array
                        progress.advance(task, input_bytes[name])
                    if following and pending is None:
                        pending = pool.submit(load, following)

        todo = [n for n in plan.names if n not in writer.done]
        if writer.done:
            log(f"resuming: {len(writer.done)} of {len(plan.names)} parameters already written")
        if trim == "global" and todo:
            merger.thresholds = global_thresholds(
                plan, len(experts), density, read, check=check_by_histogram
            )

        def write(name: str, merged) -> None:
            guard.check_result(name, merged)  # before it is journaled as written
            with writing(output, name):
                writer.write(name, merged)

        with WriteBehind(write, limit=budget // 6 if jax.process_count() == 1 else 0) as out:
            for name, expert_arrays, base_array in read(todo, f"merging ({config.method})"):
                failpoints.hit("merge.before_kernel")
                thresholds = None
                if trim == "tensor":
                    thresholds = tensor_thresholds(
                        expert_arrays,
                        base_array,
                        density,
                        check=lambda *h, name=name: check_by_histogram(name, *h),
                    )
                merged = merger.merge(
                    name, expert_arrays, base_array, budget // 4, thresholds=thresholds
                )
                del expert_arrays, base_array  # donated, or mapped files
                failpoints.hit("merge.after_kernel")
                out.write(name, merged)
                del merged
        wall = time.perf_counter() - start
        checkpoint = os.path.relpath(pathlib.Path(writer.path).resolve(), output)  # or "."
        info = manifest(config, plan, readers, wall, key, checkpoint)
        with writing(output):
            final = writer.finalize(
                extra_files={
                    "manifest.json": json.dumps(info, indent=2).encode(),
                    "config.gin": operative_config(config).encode(),
                }
            )
    finally:  # on failure the staging directory stays, for a resume
        writer.close()  # the output lock
        progress.close()
        for _, reader in readers:
            reader.close()
    log(
        f"merged {len(experts)} expert(s) with {config.method} "
        f"({', '.join(f'{k}={v}' for k, v in hparams.items()) or 'defaults'}): "
        f"{info['num_parameters']:,} parameters in {wall:.1f}s, "
        f"peak RSS {info['peak_rss_bytes'] / 2**30:.2f} GiB → {final}"
    )
    return final
