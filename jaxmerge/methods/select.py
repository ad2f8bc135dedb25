"""Exact k-th largest magnitude, without sorting or flattening: radix selection.

For x ≥ 0 (and +inf), the float32 bit pattern read as an unsigned integer is
monotone in the value, so the k-th largest |x| is the k-th largest 31-bit
integer `bits(|x|)`. Radix selection finds it digit by digit:

  1. histogram the high 15 bits (bits 30..16) over every element,  h₁[d];
     walk the bins from the top: d* is the bin where the running count first
     reaches k; k' = k − (elements in higher bins).
  2. histogram the low 16 bits of the elements whose high digit is d*, h₂[d];
     walk it the same way for rank k' → low digit.
  3. threshold = float32 from (d* << 16) | low.

Histograms add: a model's histogram is the sum of its tensors' histograms, a
sharded tensor's is the sum of its shards' (XLA inserts the all-reduce), and a
multi-host model's is the sum over hosts. That is what lets the merge engine
compute the exact global TIES threshold of a model larger than memory in two
streaming passes (`high_histogram`, `low_histogram`), and what `kth_largest_
magnitude` does in memory.

The result equals `np.sort(np.abs(x).ravel())[-k]` exactly, ties included
(tested against `np.partition`). NaN counts above +inf; callers refuse
non-finite inputs before they get here.

Counts are int32 per call: one call covers < 2³¹ elements; the engine adds
per-chunk histograms in int64 on the host.
"""

from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

HIGH_BINS = 1 << 15  # bits 30..16 of |x| (bit 31, the sign, is 0)
LOW_BINS = 1 << 16  # bits 15..0


def magnitude_bits(x: jax.Array) -> jax.Array:
    """uint32 bit pattern of |x| in float32; monotone in |x|."""
    return jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.uint32)


def high_histogram(x: jax.Array) -> jax.Array:
    """Counts of |x| per high digit (bits 30..16): int32[HIGH_BINS]."""
    digit = (magnitude_bits(x) >> 16).astype(jnp.int32).ravel()
    return jnp.zeros(HIGH_BINS, jnp.int32).at[digit].add(1, mode="drop")


def low_histogram(x: jax.Array, high_digit: jax.Array | int) -> jax.Array:
    """Counts of the low 16 bits of |x| among elements whose high digit is `high_digit`."""
    bits = magnitude_bits(x).ravel()
    in_bucket = (bits >> 16) == jnp.asarray(high_digit, jnp.uint32)
    low = jnp.where(in_bucket, (bits & 0xFFFF).astype(jnp.int32), LOW_BINS)  # LOW_BINS: dropped
    return jnp.zeros(LOW_BINS, jnp.int32).at[low].add(1, mode="drop")


def resolve_digit(histogram, k):
    """Walks `histogram` from its top bin to the bin holding the k-th largest element.

    Returns (digit, rank within that bin, 1-based). Works on jax or numpy
    arrays; `k` must satisfy 1 ≤ k ≤ histogram.sum().
    """
    xp = jnp if isinstance(histogram, jax.Array) else np
    from_top = xp.cumsum(histogram[::-1])  # from_top[j]: count in the top j+1 bins
    j = xp.argmax(from_top >= k)  # first bin (from the top) reaching rank k
    above = from_top[j] - histogram[::-1][j]  # elements in strictly higher bins
    digit = histogram.shape[0] - 1 - j
    return digit, k - above


def threshold_from_digits(high_digit, low_digit):
    """float32 whose bit pattern is (high << 16) | low."""
    xp = jnp if isinstance(high_digit, jax.Array) or isinstance(low_digit, jax.Array) else np
    bits = (xp.asarray(high_digit, xp.uint32) << 16) | xp.asarray(low_digit, xp.uint32)
    if xp is np:
        return np.asarray(bits, np.uint32).view(np.float32)[()]
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def kth_largest_magnitude(xs: jax.Array | Sequence[jax.Array], k: int) -> jax.Array:
    """Exact k-th largest |x| over all elements of one array or of several (jittable).

    t = the k-th largest of {|x_j|}, i.e. `np.sort(|x|)[-k]`; k = 0 gives +inf
    (nothing is as large), so `|x| ≥ t` keeps exactly the top-k and any ties at t.

    Args:
      xs: an array, or a sequence of arrays of any shapes (a whole model's task
        vector for one expert); any float dtype.
      k: static Python int, 0 ≤ k ≤ total number of elements.
    Returns:
      float32 scalar.
    """
    arrays = [xs] if isinstance(xs, jax.Array | np.ndarray) else list(xs)
    n = sum(int(np.prod(a.shape)) for a in arrays)
    if not 0 <= k <= n:
        raise ValueError(f"kth_largest_magnitude: k={k} is outside [0, {n}] (number of elements)")
    if k == 0:
        return jnp.float32(jnp.inf)
    high = sum(high_histogram(a) for a in arrays)
    high_digit, rank = resolve_digit(high, k)
    low = sum(low_histogram(a, high_digit) for a in arrays)
    low_digit, _ = resolve_digit(low, rank)
    return threshold_from_digits(high_digit, low_digit)


def count_for_fraction(fraction: float, n: int) -> int:
    """k = ceil(fraction · n), the number of entries a density keeps (DESIGN.md).

    Exact in rational arithmetic on the decimal the user wrote (0.7 · 10 = 7,
    not the 7.000000000000001 that float64 gives), whatever n.
    """
    k = -((-Fraction(repr(float(fraction))) * n) // 1)  # ceil
    return max(0, min(n, int(k)))
