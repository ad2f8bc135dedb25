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

One pass instead of two, in the common case: a strided sample (every
SAMPLE_STRIDE-th element) brackets the threshold; `bracket_histogram` then
counts, in a single pass, every bit pattern inside a BRACKET_BINS-wide bracket
exactly plus everything above it. If the k-th largest lies in the bracket
(`resolve_bracket` says so) that is the answer; otherwise the two-pass radix
above runs. Either way the answer is exact; the sample only decides how fast.
On XLA:CPU a histogram pass costs about four elementwise passes (scatters run
on one core), so this halves TIES' selection time, and it halves how often a
streaming merge re-reads its experts.

The result equals `np.sort(np.abs(x).ravel())[-k]` exactly, ties included
(tested against `np.partition`). NaN counts above +inf; callers refuse
non-finite inputs before they get here.

Counts are int32 per call: one call covers < 2³¹ elements; the engine adds
per-chunk histograms in int64 on the host. On one CPU device the engine counts
the same histograms with `jaxmerge.host_select` (numba) instead of XLA's scatters.
"""

from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

HIGH_BINS = 1 << 15  # bits 30..16 of |x| (bit 31, the sign, is 0)
LOW_BINS = 1 << 16  # bits 15..0
NONFINITE_HIGH_DIGIT = 0x7F80  # high digits from here up: |x| is +inf or NaN (exponent all ones)
BRACKET_BINS = 1 << 18  # bit patterns counted one by one around the sampled threshold
ABOVE_BINS = 1 << 8  # patterns above the bracket, spread (u mod 256) so adds don't chain
SAMPLE_STRIDE = 128
SAMPLE_SIGMAS = 4.0  # bracket half-width in binomial standard deviations of the sample rank
MIN_SIZE_FOR_BRACKET = 1 << 16  # below this, two small passes are cheaper than a sort


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


def sample_bits(x: jax.Array) -> jax.Array:
    """Bit patterns of |x| at every SAMPLE_STRIDE-th element (at least one)."""
    return magnitude_bits(x).ravel()[::SAMPLE_STRIDE]


def bracket_from_sample(sample: jax.Array, k: int, n: int) -> jax.Array:
    """Lowest bit pattern of a BRACKET_BINS-wide bracket that likely holds the k-th largest.

    The sample's rank r = k·m/n estimates where the threshold sits; the bracket
    covers the sample values SAMPLE_SIGMAS binomial deviations either side of it
    when they fit, else it is centred on the estimate. A miss costs time (the
    fallback pass), never exactness. Bit patterns of finite |x| are < 2³¹, so
    int32 arithmetic is exact.
    """
    m = sample.shape[0]
    ordered = jnp.sort(sample.astype(jnp.int32))[::-1]  # descending: index i has rank i + 1
    rank = k * m / n
    margin = SAMPLE_SIGMAS * np.sqrt(max(rank * (1 - rank / m), 1.0)) + 1
    index = lambda r: int(np.clip(r - 1, 0, m - 1))
    upper = ordered[index(np.floor(rank - margin))]
    lower = ordered[index(np.ceil(rank + margin))]
    estimate = ordered[index(np.round(rank))]
    width = upper - lower + 1
    start = jnp.where(
        width <= BRACKET_BINS, lower - (BRACKET_BINS - width) // 2, estimate - BRACKET_BINS // 2
    )
    return jnp.maximum(start, 0).astype(jnp.uint32)


def bracket_histogram(x: jax.Array, start: jax.Array | int) -> jax.Array:
    """One pass: int32[BRACKET_BINS + ABOVE_BINS].

    bin j < BRACKET_BINS counts the elements whose |x| bit pattern is start + j;
    the ABOVE_BINS bins after it together count every pattern above the bracket.
    Patterns below `start` are dropped.
    """
    bits = magnitude_bits(x).ravel()
    start = jnp.asarray(start, jnp.uint32)
    offset = bits - start  # wraps for bits < start: caught by `below`
    below = bits < start
    above = ~below & (offset >= BRACKET_BINS)
    index = jnp.where(above, BRACKET_BINS + (bits & (ABOVE_BINS - 1)), offset)
    index = jnp.where(below, BRACKET_BINS + ABOVE_BINS, index).astype(jnp.int32)  # dropped
    return jnp.zeros(BRACKET_BINS + ABOVE_BINS, jnp.int32).at[index].add(1, mode="drop")


def resolve_bracket(histogram, k, start):
    """(found, threshold): the k-th largest if it lies inside the bracket."""
    xp = jnp if isinstance(histogram, jax.Array) else np
    above = histogram[BRACKET_BINS:].sum()
    inside = histogram[:BRACKET_BINS]
    found = (above < k) & (above + inside.sum() >= k)
    digit, _ = resolve_digit(inside, xp.maximum(k - above, 1))
    bits = xp.asarray(start, xp.uint32) + xp.asarray(digit, xp.uint32)
    if xp is np:
        return bool(found), np.asarray(bits, np.uint32).view(np.float32)[()]
    return found, jax.lax.bitcast_convert_type(bits, jnp.float32)


def _two_pass(arrays, k):
    high = sum(high_histogram(a) for a in arrays)
    high_digit, rank = resolve_digit(high, k)
    low = sum(low_histogram(a, high_digit) for a in arrays)
    low_digit, _ = resolve_digit(low, rank)
    return threshold_from_digits(high_digit, low_digit)


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
    if n < MIN_SIZE_FOR_BRACKET:
        return _two_pass(arrays, k)
    sample = jnp.concatenate([sample_bits(a) for a in arrays])
    start = bracket_from_sample(sample, k, n)
    histogram = sum(bracket_histogram(a, start) for a in arrays)
    found, threshold = resolve_bracket(histogram, k, start)
    return jax.lax.cond(found, lambda: threshold, lambda: _two_pass(arrays, k))


def count_for_fraction(fraction: float, n: int) -> int:
    """k = ceil(fraction · n), the number of entries a density keeps (DESIGN.md).

    Exact in rational arithmetic on the decimal the user wrote (0.7 · 10 = 7,
    not the 7.000000000000001 that float64 gives), whatever n.
    """
    k = -((-Fraction(repr(float(fraction))) * n) // 1)  # ceil
    return max(0, min(n, int(k)))
