"""TIES' exact trim thresholds: the k-th largest |τᵢ| per expert by radix selection.

Two histogram passes (high 15 bits, then the low 16 inside the bucket found), over the
whole model streamed parameter by parameter (`--trim global`) or over one tensor in memory
(`--trim tensor`). On one CPU device `host_select`'s numba loops count them, else XLA's
scatters; the counts are the same either way, so the thresholds are exact."""

import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge import failpoints
from jaxmerge.merging.plan import Plan
from jaxmerge.methods import select


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
    from jaxmerge.merging import host_select  # numba: imported by the merges that count on the host

    return host_select if host_select.usable([*experts, base]) else None


def warm_up_host_select(dtypes) -> None:
    """Compiles host_select's loops (or loads them from numba's cache) on a side thread,
    while the merge opens its output and reads its first parameters."""

    def warm_up():
        from jaxmerge.merging import host_select

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
