"""The merge engine: plan first, then stream parameter by parameter.

    paths ─► checkpoints.open ─► plan (names, shapes, dtypes agree; before any heavy work)
          ─► [ties, trim=global] two streaming histogram passes → exact per-expert thresholds
             ([ties, trim=tensor] the same two passes per parameter, in memory; on one
             CPU device host_select's numba loops count them, else XLA's scatters)
          ─► per parameter: base + K experts read straight into their NamedSharding
             → jit(method)(experts, base, key, thresholds), inputs donated
             → writer.write(name, merged)      (on its own thread; the next parameters
                                                are read meanwhile)
          ─► writer.finalize(): manifest.json + config.gin, atomic rename

Peak memory is bounded by the memory budget, not by model size × experts. The
group of parameters being merged, the next group being read (which briefly
holds a host and a device copy) and the merged parameters waiting to be written
(on a thread of their own) each get a sixth of the budget; the kernel's float32
temporaries a quarter (an elementwise merge — average, task arithmetic, TIES
with its global thresholds — of a larger tensor runs in row blocks); the rest
is the runtime's. A parameter whose inputs alone exceed a
sixth merges alone, with nothing read beside it. A killed merge re-run with the same
arguments resumes from the parameters already written and yields the same
bytes: randomness depends only on (seed, parameter name, expert index).
"""

import dataclasses
import hashlib
import json
import pathlib
import platform
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

import jaxmerge
from jaxmerge import checkpoints, failpoints, preflight, sharding
from jaxmerge.errors import InputError, writing
from jaxmerge.methods import get_method, hparam_defaults, parameter_key, select
from jaxmerge.methods.tree import TRIMS
from jaxmerge.nonfinite import NonFiniteGuard

HPARAMS = ("lam", "density", "drop_rate", "trim", "gamma", "epsilon", "t")
DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}
DEFAULT_RULES = ((".*", PartitionSpec("data")),)  # first dimension over every device
# Groups of parameters only amortise per-call overhead; past a few hundred MB they
# buy no speed, only memory. The default budget is this, or less (default_budget).
DEFAULT_BUDGET = 2 * 2**30

# Inputs are donated so XLA may write the result over one of them (the base when dtypes
# match); the others are freed with it. XLA warns about the ones it did not reuse. Not
# inputs that alias a mapped file (safetensors): XLA would first copy those to donate them,
# which measured 1.12 → 0.77 ns an element for task arithmetic without donation.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """One merge, as `jaxmerge merge` flags or gin bindings (`merge.MergeConfig.<field>`).

    Hyperparameters left None take the method's paper defaults; setting one the
    method does not take is an error.
    """

    method: str
    experts: Sequence[str]
    output: str
    base: str | None = None
    weights: Sequence[float] | None = None
    lam: float | None = None
    density: float | None = None
    drop_rate: float | None = None
    trim: str | None = None
    gamma: float | None = None
    epsilon: float | None = None
    t: float | None = None
    seed: int = 0
    input_format: str | None = None
    output_format: str | None = None
    dtype: str | None = None
    memory_budget: int | None = None  # bytes; None: default_budget()
    overwrite: bool = False
    max_shard_bytes: int = 5 * 10**9
    allow_nonfinite: bool = False  # merge NaN/Inf inputs as they are instead of refusing
    allow_unrelated: bool = False  # skip the checks that experts were fine-tuned from the base

    def hparams(self) -> dict:
        """The hyperparameters set, checked against what the method takes."""
        spec = get_method(self.method)
        chosen = {h: getattr(self, h) for h in HPARAMS if getattr(self, h) is not None}
        unknown = sorted(set(chosen) - set(spec.hparams))
        if unknown:
            takes = ", ".join(f"--{h}" for h in spec.hparams) or "no hyperparameters"
            raise InputError(
                f"{', '.join('--' + u for u in unknown)} does not apply to {self.method}"
                f" (it takes {takes})"
            )
        if "trim" in chosen and chosen["trim"] not in TRIMS:
            raise InputError(f"--trim={chosen['trim']!r}: choose from {', '.join(TRIMS)}")
        return chosen


@dataclasses.dataclass
class Plan:
    """What will be merged: checked before any parameter is read."""

    names: list[str]  # in the base's (or first expert's) order
    params: dict[str, checkpoints.ParamInfo]  # of the output
    step: int
    output_format: str
    reference: pathlib.Path  # where config.json / tokenizer files come from (safetensors)


def default_budget(devices) -> int:
    """DEFAULT_BUDGET, or half the free host memory, or half a device's free memory: the least.

    Arrays live on the devices (host memory on CPU, where memory_stats is None) and reads
    pass through the host, so both bound a merge.
    """
    limits = [DEFAULT_BUDGET, checkpoints.free_memory() // 2]
    for device in devices:
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            limits.append((stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2)
    return max(1, min(limits))


def parse_bytes(text: str) -> int:
    """'4GB' → 4·10⁹, '512MiB' → 512·2²⁰, '1000' → 1000."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    given, text = text, text.strip().upper()
    number = text.rstrip("KMGTIB")
    try:
        return int(float(number) * units[text[len(number) :]])
    except (ValueError, KeyError):
        raise InputError(
            f"--memory_budget={given!r}: expected a size such as 4GB or 512MiB"
        ) from None


def make_plan(config: MergeConfig, base, experts: Sequence) -> Plan:
    """Checks that every input has the same parameters, shapes and dtypes."""
    spec = get_method(config.method)
    models = ([("base", base)] if base is not None else []) + [
        (f"expert {i}", e) for i, e in enumerate(experts)
    ]
    ref_label, ref = models[0]
    for label, reader in models[1:]:
        missing = [n for n in ref.params if n not in reader.params]
        extra = [n for n in reader.params if n not in ref.params]
        if missing or extra:
            detail = f"lacks {missing[0]!r}" if missing else f"has extra parameter {extra[0]!r}"
            more = len(missing) + len(extra) - 1
            also = f" (and {more} more differences)" if more else ""
            raise InputError(
                f"{reader.path}: {label} {detail}{also} compared with {ref_label} {ref.path}"
            )
        for name, info in ref.params.items():
            other = reader.params[name]
            if tuple(other.shape) != tuple(info.shape):
                raise InputError(
                    f"{reader.path}: parameter {name!r} has shape {tuple(other.shape)} but "
                    f"{tuple(info.shape)} in {ref_label} {ref.path}"
                )
            if np.dtype(other.dtype) != np.dtype(info.dtype):
                raise InputError(
                    f"{reader.path}: parameter {name!r} is {np.dtype(other.dtype).name} but "
                    f"{np.dtype(info.dtype).name} in {ref_label} {ref.path} (dtype mix; convert "
                    "the inputs to one dtype first)"
                )
    if spec.needs_base and base is None:
        raise InputError(f"--base: {config.method} needs a base model (task vectors are θᵢ − θ₀)")
    out_dtype = DTYPES[config.dtype] if config.dtype else None
    params = {
        n: checkpoints.ParamInfo(tuple(i.shape), np.dtype(out_dtype or i.dtype))
        for n, i in ref.params.items()
    }
    output_format = config.output_format or ref.format
    if output_format not in checkpoints.FORMATS:
        raise InputError(
            f"--output_format={output_format!r}: choose from {', '.join(checkpoints.FORMATS)}"
        )
    return Plan(list(ref.params), params, int(ref.step or 0), output_format, ref.path)


def group_by_bytes(names: Sequence[str], sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Consecutive groups whose sizes add up to at most `limit` (a larger one stands alone)."""
    groups, current, total = [], [], 0
    for name in names:
        if current and total + sizes[name] > limit:
            groups.append(current)
            current, total = [], 0
        current.append(name)
        total += sizes[name]
    if current:
        groups.append(current)
    return groups


class Merger:
    """Holds the jitted kernels and shardings of one merge."""

    def __init__(
        self, config: MergeConfig, plan: Plan, mesh, thresholds=None, *, donate: bool = True
    ):
        self.config, self.plan, self.mesh = config, plan, mesh
        self.donate = donate
        self.spec = get_method(config.method)
        hparams = dict(config.hparams())
        hparams.pop("trim", None)
        self.hparams = hparams
        self.thresholds = thresholds
        self.weights = None if config.weights is None else jnp.asarray(config.weights, jnp.float32)
        self._kernels: dict = {}

    def sharding(self, name: str) -> NamedSharding:
        info = self.plan.params[name]
        spec = sharding.spec_from_rules(name, info.shape, DEFAULT_RULES, self.mesh)
        return NamedSharding(self.mesh, spec)

    def kernel(self, out_dtype) -> Callable:
        """jit(merge_tensor → cast), donating the experts and the base (if `donate`)."""
        if out_dtype not in self._kernels:
            spec, hparams = self.spec, self.hparams

            def merge(experts, base, weights, key, thresholds):
                kwargs = dict(hparams)
                if spec.needs_base:
                    kwargs["base"] = base
                if weights is not None:
                    kwargs["weights"] = weights
                if spec.random:
                    kwargs["key"] = key
                if thresholds is not None:
                    kwargs["thresholds"] = thresholds
                return spec.merge_tensor(experts, **kwargs).astype(out_dtype)

            donated = (0, 1) if self.donate else ()
            self._kernels[out_dtype] = jax.jit(merge, donate_argnums=donated)
        return self._kernels[out_dtype]

    def merge(
        self, name: str, experts: list, base, block_bytes: int | None = None, thresholds=None
    ):
        """Merges one parameter; in row blocks if its float32 working set exceeds block_bytes.

        Only for elementwise methods (with TIES, once the thresholds are known: the whole
        model's, or this tensor's given as `thresholds`): each block's result is exactly
        the rows of the whole tensor's.
        """
        thresholds = self.thresholds if thresholds is None else thresholds
        key = parameter_key(self.config.seed, name) if self.spec.random else None
        kernel = self.kernel(self.plan.params[name].dtype)
        shape = self.plan.params[name].shape
        working = int(np.prod(shape)) * 4 * (len(experts) + 3)  # float32 temporaries
        blockwise = self.spec.elementwise and (not self.spec.global_trim or thresholds is not None)
        if not blockwise or block_bytes is None or working <= block_bytes or len(shape) < 2:
            return kernel(experts, base, self.weights, key, thresholds)
        rows = max(1, shape[0] * block_bytes // working)
        blocks = []
        for start in range(0, shape[0], rows):
            part = slice(start, start + rows)
            blocks.append(
                kernel(
                    [e[part] for e in experts],
                    None if base is None else base[part],
                    self.weights,
                    key,
                    thresholds,
                )
            )
        return jnp.concatenate(blocks)


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


def _task_vector(expert: jax.Array, base: jax.Array) -> jax.Array:
    return expert.astype(jnp.float32) - base.astype(jnp.float32)


# A histogram pass materializes one int32 index per element before XLA:CPU scatters them.
# Over 8 row blocks those buffers are an eighth of the tensor: small enough for malloc to
# reuse rather than have the kernel zero fresh pages for every pass, and independent
# scatters its runtime can overlap. Counts add, so the histogram is exactly the same.
# Measured: TIES --trim tensor on 1.1B parameters 23-24 s → 19-21 s (benchmarks/merge.py).
HISTOGRAM_BLOCKS = 8


def _row_blocks(x: jax.Array) -> list[jax.Array]:
    if x.ndim < 2 or x.shape[0] % HISTOGRAM_BLOCKS:
        return [x]
    rows = x.shape[0] // HISTOGRAM_BLOCKS
    return [x[i * rows : (i + 1) * rows] for i in range(HISTOGRAM_BLOCKS)]


# One expert per call: a call holds one float32 task vector, not K of them.
@jax.jit
def _high_pass(expert: jax.Array, base: jax.Array) -> jax.Array:
    return sum(select.high_histogram(t) for t in _row_blocks(_task_vector(expert, base)))


@jax.jit
def _low_pass(expert: jax.Array, base: jax.Array, digit) -> jax.Array:
    return sum(select.low_histogram(t, digit) for t in _row_blocks(_task_vector(expert, base)))


def _host_select(experts, base):
    """The host_select module if its loops can count these arrays' histograms (one CPU
    device), else None: XLA's scatters count them."""
    if len(base.sharding.device_set) != 1:
        return None  # without importing numba
    from jaxmerge import host_select  # numba: imported by the merges that count on the host

    return host_select if host_select.usable([*experts, base]) else None


def _warm_up_host_select(dtypes) -> None:
    """Compiles host_select's loops (or loads them from numba's cache) on a side thread,
    while the merge opens its output and reads its first parameters."""

    def warm_up():
        from jaxmerge import host_select

        for dtype in dtypes:
            host_select.warm_up(dtype)

    threading.Thread(target=warm_up, name="jaxmerge-warm-up", daemon=True).start()


def _high_histograms(experts: Sequence[jax.Array], base: jax.Array) -> np.ndarray:
    """int64[K, HIGH_BINS]: every expert's high-digit histogram of |τᵢ|, all dispatched
    before any is fetched (one host sync). The same counts on the host or with XLA."""
    if host := _host_select(experts, base):
        return np.stack(host.per_expert(host.high_histogram, experts, base))
    return np.stack(jax.device_get([_high_pass(e, base) for e in experts])).astype(np.int64)


def _low_histograms(experts: Sequence[jax.Array], base: jax.Array, digits) -> np.ndarray:
    """int64[K, LOW_BINS]: expert i's low-digit histogram inside its bucket digits[i]."""
    if host := _host_select(experts, base):
        return np.stack(host.per_expert(host.low_histogram, experts, base, digits))
    pairs = zip(experts, digits, strict=True)
    return np.stack(jax.device_get([_low_pass(e, base, d) for e, d in pairs])).astype(np.int64)


def _thresholds(high: np.ndarray, low_of: Callable, k: int) -> jax.Array:
    """Radix selection's two steps per expert: the high digit and rank from `high[i]`, then
    the low digit from `low_of(digits)[i]`, the low histogram inside each bucket found.
    Returns the exact k-th largest |τᵢ| per expert, float32[K]."""
    resolved = [select.resolve_digit(h, k) for h in high]
    low = low_of([np.uint32(d) for d, _ in resolved])
    thresholds = [
        select.threshold_from_digits(int(d), int(select.resolve_digit(h, rank)[0]))
        for (d, rank), h in zip(resolved, low, strict=True)
    ]
    return jnp.asarray(np.asarray(thresholds, np.float32))


def global_thresholds(
    plan: Plan, num_experts: int, density: float, read: Callable, check: Callable | None = None
) -> jax.Array:
    """Exact per-expert TIES thresholds over all parameters: two streaming histogram passes.

    `check(name, high, experts, base)` sees each parameter's int64[K, HIGH_BINS] of pass 1
    (high None: no histogram was made, the density keeps nothing).

    Pass 1 adds each expert's high-digit histograms of |τᵢ| parameter by
    parameter (int64 on the host), which fixes each threshold's high 15 bits
    and its rank inside that bucket; pass 2 histograms the low 16 bits inside
    the bucket. Counts are integers, so the result is exact however XLA partitions
    the histogram of a sharded array (tested on 8 devices against 1).
    """
    n = sum(int(np.prod(plan.params[name].shape)) for name in plan.names)
    k = select.count_for_fraction(density, n)
    if k == 0:
        return jnp.full((num_experts,), jnp.inf, jnp.float32)

    high = np.zeros((num_experts, select.HIGH_BINS), np.int64)
    for name, expert_arrays, base_array in read(plan.names, "threshold pass 1/2"):
        histograms = _high_histograms(expert_arrays, base_array)
        if check is not None:
            check(name, histograms, expert_arrays, base_array)
        high += histograms
        failpoints.hit("threshold.pass1")

    def low_of(digits):
        low = np.zeros((num_experts, select.LOW_BINS), np.int64)
        for _, expert_arrays, base_array in read(plan.names, "threshold pass 2/2"):
            low += _low_histograms(expert_arrays, base_array, digits)
            failpoints.hit("threshold.pass2")
        return low

    return _thresholds(high, low_of, k)


def tensor_thresholds(
    experts: Sequence[jax.Array], base: jax.Array, density: float, check: Callable | None = None
):
    """Exact per-expert TIES thresholds over one tensor (`--trim tensor`), float32[K].

    The same two histogram passes as `global_thresholds`, over arrays already in memory;
    `check(high, experts, base)` sees the high-digit histograms (None if k is 0).
    The merge itself then needs no selection of its own: it is elementwise, merges in
    row blocks within the budget, and its kernel compiles in a fraction of the time of
    one that selects (a sort of the sample, a conditional fallback), once per shape.
    """
    k = select.count_for_fraction(density, int(np.prod(base.shape)))
    if k and (host := _host_select(experts, base)):  # one pass, usually: host_select.high_pass
        passes = host.per_expert(host.high_pass, experts, base, [k] * len(experts))
        high = np.stack([p.histogram for p in passes])

        def low_of(digits):
            return np.stack(
                host.per_expert(host.low_histogram_after, experts, base, passes, digits)
            )
    else:
        high = _high_histograms(experts, base) if k else None
        low_of = lambda digits: _low_histograms(experts, base, digits)  # noqa: E731
    if check is not None:
        check(high, experts, base)
    if k == 0:
        return jnp.full((len(experts),), jnp.inf, jnp.float32)
    return _thresholds(high, low_of, k)


def _metadata_digest(reader) -> str:
    listing = [(n, list(i.shape), np.dtype(i.dtype).name) for n, i in reader.params.items()]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _size_on_disk(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_key(config: MergeConfig, readers) -> str:
    """A digest of what decides the merged values: a partial output resumes only under it.

    Method, hyperparameters, weights, seed, dtype and each input's path and metadata; not
    the output's path, the memory budget or the allow_* switches, which change no value.
    """
    fields = dataclasses.asdict(config)
    for ignored in ("output", "overwrite", "memory_budget", "allow_nonfinite", "allow_unrelated"):
        fields.pop(ignored)
    fields["inputs"] = [(role, str(r.path), _metadata_digest(r)) for role, r in readers]
    text = json.dumps(fields, sort_keys=True, default=str)  # paths as given
    return hashlib.sha256(text.encode()).hexdigest()


def manifest(config, plan, readers, wall_seconds: float) -> dict:
    """What was merged, how, with what, and what it cost."""
    return {
        "jaxmerge_version": jaxmerge.__version__,
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "devices": f"{jax.device_count()} × {jax.devices()[0].device_kind}",
        "method": config.method,
        "hparams": config.hparams(),
        "weights": None if config.weights is None else list(config.weights),
        "seed": config.seed,
        "output_format": plan.output_format,
        "step": plan.step,
        "num_parameters": int(sum(int(np.prod(i.shape)) for i in plan.params.values())),
        "inputs": [
            {
                "role": role,
                "path": str(reader.path),
                "format": reader.format,
                "step": reader.step,
                "bytes": _size_on_disk(pathlib.Path(reader.path)),
                "metadata_sha256": _metadata_digest(reader),
            }
            for role, reader in readers
        ],
        "wall_seconds": round(wall_seconds, 3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


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
    preflight.check_inputs(config, base, experts)
    plan = make_plan(config, base, experts)
    preflight.check_shared_base(config, base, experts)
    mesh = sharding.make_mesh()
    if spec.global_trim and mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu":
        _warm_up_host_select({np.dtype(info.dtype) for info in base.params.values()})
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
            run_key=run_key(config, readers),  # resumes only a killed run of this same merge
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
        info = manifest(config, plan, readers, wall)
        with writing(output):
            final = writer.finalize(
                extra_files={
                    "manifest.json": json.dumps(info, indent=2).encode(),
                    "config.gin": _operative_config(config).encode(),
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


def _operative_config(config: MergeConfig) -> str:
    """The gin bindings that reproduce this merge (T5X writes its operative config too)."""
    import gin

    lines = ["from __gin__ import dynamic_registration", "", "from jaxmerge import merge", ""]
    operative = gin.operative_config_str().strip()
    if operative:
        lines += ["# operative config of the gin files and bindings given", operative, ""]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, tuple | list):
            value = list(value)
        lines.append(f"merge.MergeConfig.{field.name} = {value!r}")
    return "\n".join(lines) + "\n"


__all__ = ["MergeConfig", "make_plan", "merge_checkpoints", "parse_bytes"]
