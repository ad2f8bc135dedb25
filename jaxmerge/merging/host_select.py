"""TIES' selection histograms on the host CPU, for merges on one CPU device.

The exact per-tensor and global TIES thresholds come from two histograms of the
float32 bit patterns of |τᵢ| = |θᵢ − θ₀| (`methods.select`): the high 15 bits, then
the low 16 bits inside one high bucket. XLA:CPU computes a histogram as a scatter on
one core, about 1.9 ns an element per pass here, and that was most of a TIES merge.
These numba loops compute the same integer counts straight from the bfloat16 or
float32 inputs, in chunks that stay in cache, at about 1 ns an element, and release
the GIL, so the experts' histograms run on separate cores.

The counts equal `select.high_histogram` / `select.low_histogram` of the task vector
XLA:CPU computes (tested against them), including XLA:CPU's treatment of subnormals:
it reads subnormal inputs as zero and flushes subnormal results to zero, and so do
these loops. Arrays sharded over several devices, on accelerators, or of other dtypes
keep the XLA path (`usable`).
"""

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import ml_dtypes
import numba
import numpy as np

from jaxmerge.methods import select

CHUNK = 4096  # elements per step: the widened inputs and |τ| stay in L1/L2
SAMPLE_STRIDE = 64  # high_pass samples 1/64 of a tensor to guess where the k-th lies,
SAMPLE_RUN = 64  # in runs of 64 elements
SAMPLE_SIGMAS = 6.0  # and keeps the buckets within 6 standard deviations of its rank
CANDIDATE_FRACTION = 16  # at most n/16 candidates (the buckets kept hold ~1-3% of a tensor)
MIN_SAMPLED_SIZE = 1 << 21  # smaller tensors: the sample is too coarse, two passes are cheap
SUB_HISTOGRAMS = 4  # interleaved copies, so repeated bins do not chain their increments
# (unsigned view, shift to float32 bits) by input dtype
_VIEWS = {np.dtype(ml_dtypes.bfloat16): (np.uint16, 16), np.dtype(np.float32): (np.uint32, 0)}
_EXPONENT = np.uint32(0x7F800000)
_SIGN = np.uint32(0x80000000)
_SMALLEST_NORMAL = np.float32(np.finfo(np.float32).tiny)
_pool: ThreadPoolExecutor | None = None


@numba.njit(nogil=True, cache=True)
def _widen(src, shift, out):
    """float32 bit patterns of `src` (bfloat16 bits << 16, or float32 bits), subnormals → ±0."""
    for j in range(src.size):
        bits = np.uint32(src[j]) << shift
        out[j] = bits if bits & _EXPONENT else bits & _SIGN


@numba.njit(nogil=True, cache=True)
def _abs_difference(expert_bits, base_bits, out_bits):
    """Bits of |expert − base| in float32, a subnormal result flushed to zero."""
    expert, base, out = expert_bits.view(np.float32), base_bits.view(np.float32), out_bits
    for j in range(expert.size):
        magnitude = abs(expert[j] - base[j])
        out[j] = 0.0 if magnitude < _SMALLEST_NORMAL else magnitude
    return out.view(np.uint32)


@numba.njit(nogil=True, cache=True)
def _chunk_bits(expert, base, shift, start, m, scratch):
    """Bits of |expert − base| for elements [start, start + m), in scratch (3 × CHUNK)."""
    _widen(expert[start : start + m], shift, scratch[0])
    _widen(base[start : start + m], shift, scratch[1])
    return _abs_difference(scratch[0, :m], scratch[1, :m], scratch[2, :m].view(np.float32))


@numba.njit(nogil=True, cache=True)
def _high_counts(expert, base, shift, hist, first_digit, last_digit, candidates):
    """Adds the high-digit histogram to `hist`; keeps the bits of every |τ| whose high digit
    lies in [first_digit, last_digit] in `candidates` (if not empty). Returns how many
    there were: more than candidates.size means they did not all fit."""
    scratch = np.empty((3, CHUNK), np.uint32)
    sub = np.zeros((SUB_HISTOGRAMS, hist.size), np.int64)
    span = last_digit - first_digit
    count = 0
    for start in range(0, expert.size, CHUNK):
        m = min(CHUNK, expert.size - start)
        bits = _chunk_bits(expert, base, shift, start, m, scratch)
        whole = m - m % SUB_HISTOGRAMS
        if candidates.size == 0:
            for j in range(0, whole, SUB_HISTOGRAMS):
                for s in range(SUB_HISTOGRAMS):
                    sub[s, bits[j + s] >> np.uint32(16)] += 1
        else:  # in the same loop: a second loop over the chunk costs more than the branch
            for j in range(0, whole, SUB_HISTOGRAMS):
                for s in range(SUB_HISTOGRAMS):
                    digit = bits[j + s] >> np.uint32(16)
                    sub[s, digit] += 1
                    if digit - first_digit <= span:  # unsigned: first ≤ digit ≤ last
                        if count < candidates.size:
                            candidates[count] = bits[j + s]
                        count += 1
        for j in range(whole, m):
            digit = bits[j] >> np.uint32(16)
            sub[0, digit] += 1
            if candidates.size and digit - first_digit <= span:
                if count < candidates.size:
                    candidates[count] = bits[j]
                count += 1
    for s in range(SUB_HISTOGRAMS):
        hist += sub[s]
    return count


@numba.njit(nogil=True, cache=True)
def _low_counts(expert, base, shift, high_digit, hist):
    scratch = np.empty((3, CHUNK), np.uint32)
    for start in range(0, expert.size, CHUNK):
        m = min(CHUNK, expert.size - start)
        bits = _chunk_bits(expert, base, shift, start, m, scratch)
        for j in range(m):
            if bits[j] >> np.uint32(16) == high_digit:
                hist[bits[j] & np.uint32(0xFFFF)] += 1


def usable(arrays) -> bool:
    """Whether every array lives whole on one CPU device, all bfloat16 or all float32."""
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1 or next(iter(dtypes)) not in _VIEWS:
        return False
    for a in arrays:
        devices = a.sharding.device_set if isinstance(a, jax.Array) else None
        if devices is not None and (len(devices) != 1 or next(iter(devices)).platform != "cpu"):
            return False
    return True


def _bits(array) -> tuple[np.ndarray, np.uint32]:
    view, shift = _VIEWS[np.dtype(array.dtype)]
    host = np.asarray(array)  # a single-device CPU array: its own buffer, no copy
    return np.ascontiguousarray(host).reshape(-1).view(view), np.uint32(shift)


_NO_CANDIDATES = np.empty(0, np.uint32)


def high_histogram(expert, base) -> np.ndarray:
    """int64[HIGH_BINS]: `select.high_histogram(expert − base)` in float32."""
    (e, shift), (b, _) = _bits(expert), _bits(base)
    hist = np.zeros(select.HIGH_BINS, np.int64)
    _high_counts(e, b, shift, hist, np.uint32(1), np.uint32(0), _NO_CANDIDATES)
    return hist


@dataclasses.dataclass
class HighPass:
    """A tensor's high-digit histogram, and the |τ| bits of the buckets [first, last]."""

    histogram: np.ndarray  # int64[HIGH_BINS]
    first: int
    last: int
    candidates: np.ndarray | None  # uint32 bits; None if they did not fit

    def low_histogram(self, high_digit: int) -> np.ndarray | None:
        """The low-digit histogram inside bucket `high_digit`, if the candidates hold it."""
        if self.candidates is None or not self.first <= high_digit <= self.last:
            return None
        inside = self.candidates[self.candidates >> np.uint32(16) == high_digit]
        low = inside & np.uint32(0xFFFF)
        return np.bincount(low, minlength=select.LOW_BINS).astype(np.int64)


def high_pass(expert, base, k: int) -> HighPass:
    """The high-digit histogram of |τ| = |expert − base|, keeping on the way the elements of
    the buckets where a sample says the k-th largest lies, so that the low-digit
    histogram (`low_histogram_after`) usually needs no second pass over the tensor.

    The sample is every SAMPLE_STRIDE-th element; the buckets kept are those holding its
    ranks k·m/n ± SAMPLE_SIGMAS binomial standard deviations (m sampled of n). Whether the
    k-th largest is among them is known only from the exact histogram, so the result is
    exact either way; a miss costs the second pass.
    """
    n = int(np.prod(base.shape))
    if n < MIN_SAMPLED_SIZE or not 0 < k <= n:
        return HighPass(high_histogram(expert, base), 1, 0, None)
    (e, shift), (b, _) = _bits(expert), _bits(base)
    hist = np.zeros(select.HIGH_BINS, np.int64)
    sample = np.zeros(select.HIGH_BINS, np.int64)
    sampled_e, sampled_b = _sample(e), _sample(b)
    _high_counts(sampled_e, sampled_b, shift, sample, np.uint32(1), np.uint32(0), _NO_CANDIDATES)
    m = sampled_e.size
    p = k / n
    rank, spread = p * m, SAMPLE_SIGMAS * math.sqrt(m * p * (1 - p)) + 1
    last = int(select.resolve_digit(sample, max(1, math.floor(rank - spread)))[0])
    first = int(select.resolve_digit(sample, min(m, math.ceil(rank + spread)))[0])
    candidates = np.empty(n // CANDIDATE_FRACTION + 1024, np.uint32)
    count = _high_counts(e, b, shift, hist, np.uint32(first), np.uint32(last), candidates)
    return HighPass(hist, first, last, candidates[:count] if count <= candidates.size else None)


def _sample(bits: np.ndarray) -> np.ndarray:
    """The first SAMPLE_RUN elements of every SAMPLE_RUN·SAMPLE_STRIDE: 1/SAMPLE_STRIDE of
    the tensor, read in runs (a strided gather would touch every cache line)."""
    block = SAMPLE_RUN * SAMPLE_STRIDE
    whole = bits[: bits.size - bits.size % block].reshape(-1, block)
    return np.ascontiguousarray(whole[:, :SAMPLE_RUN]).reshape(-1)


def low_histogram_after(expert, base, passed: HighPass, high_digit) -> np.ndarray:
    """`low_histogram(expert, base, high_digit)`, from the candidates of `passed` if they
    hold that bucket, else by a second pass."""
    low = passed.low_histogram(int(high_digit))
    return low if low is not None else low_histogram(expert, base, high_digit)


def low_histogram(expert, base, high_digit) -> np.ndarray:
    """int64[LOW_BINS]: `select.low_histogram(expert − base, high_digit)` in float32."""
    (e, shift), (b, _) = _bits(expert), _bits(base)
    hist = np.zeros(select.LOW_BINS, np.int64)
    _low_counts(e, b, shift, np.uint32(high_digit), hist)
    return hist


def per_expert(histogram, experts, base, *per_expert_args) -> list[np.ndarray]:
    """histogram(expertᵢ, base, argᵢ...) for every expert, on as many threads as CPUs."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="jaxmerge-select")
    calls = zip(experts, *per_expert_args, strict=True)
    futures = [_pool.submit(histogram, e, base, *args) for e, *args in calls]
    return [f.result() for f in futures]


def warm_up(dtype) -> None:
    """Compiles (or loads from numba's cache) the loops for `dtype`, e.g. on a side thread
    while the merge plans and reads."""
    if np.dtype(dtype) in _VIEWS:
        x = np.zeros((2, CHUNK // 2 + 3), dtype)
        high_histogram(x, x)
        low_histogram(x, x, 0)
