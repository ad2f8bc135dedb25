"""Exact k-th largest magnitude by radix selection, against np.partition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxmerge.methods import select


def reference(arrays, k):
    magnitudes = np.concatenate([np.abs(np.asarray(a, np.float32)).ravel() for a in arrays])
    return np.partition(magnitudes, magnitudes.size - k)[magnitudes.size - k]


@pytest.mark.parametrize("k", [1, 2, 17, 500, 4999, 5000])
def test_matches_partition_on_random_floats(k):
    x = np.random.default_rng(k).standard_normal(5000).astype(np.float32)
    assert select.kth_largest_magnitude(jnp.asarray(x), k) == reference([x], k)


def test_ties_and_signed_zeros():
    x = jnp.asarray([0.0, -0.0, 2.0, -2.0, 2.0, 1.0, -1.0, 0.0], jnp.float32)
    expected = [2.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert [float(select.kth_largest_magnitude(x, k)) for k in range(1, 9)] == expected


def test_k_zero_is_infinite_and_k_out_of_range_raises():
    x = jnp.ones(4)
    assert select.kth_largest_magnitude(x, 0) == jnp.inf
    with pytest.raises(ValueError, match="outside"):
        select.kth_largest_magnitude(x, 5)


def test_several_arrays_and_dtypes_count_as_one_population():
    rng = np.random.default_rng(0)
    arrays = [
        jnp.asarray(rng.standard_normal((7, 3)), jnp.bfloat16),
        jnp.asarray(rng.standard_normal(11), jnp.float16),
        jnp.asarray(rng.standard_normal((2, 2, 2)) * 1e-3, jnp.float32),
    ]
    for k in (1, 10, 20, 40):
        assert select.kth_largest_magnitude(arrays, k) == reference(arrays, k)


def test_under_jit_and_on_eight_devices():
    x = np.random.default_rng(1).standard_normal((64, 40)).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    assert len(sharded.sharding.device_set) == 8
    jitted = jax.jit(select.kth_largest_magnitude, static_argnums=1)
    for k in (1, 512, 2560):
        assert jitted(sharded, k) == reference([x], k)


def test_streaming_protocol_adds_chunk_histograms_on_the_host():
    """What the engine does: int64 sums of per-chunk histograms, resolved with numpy."""
    rng = np.random.default_rng(2)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (1000, 1, 2500)]
    k = 700
    high = sum(np.asarray(select.high_histogram(jnp.asarray(c)), np.int64) for c in chunks)
    high_digit, rank = select.resolve_digit(high, k)
    low = sum(
        np.asarray(select.low_histogram(jnp.asarray(c), int(high_digit)), np.int64) for c in chunks
    )
    low_digit, _ = select.resolve_digit(low, rank)
    assert select.threshold_from_digits(high_digit, low_digit) == reference(chunks, k)


@pytest.mark.parametrize(
    ("fraction", "n", "k"), [(0.2, 10, 2), (0.7, 10, 7), (0.25, 10, 3), (1.0, 3, 3), (0.0, 9, 0)]
)
def test_count_for_fraction_is_exact_ceiling(fraction, n, k):
    assert select.count_for_fraction(fraction, n) == k


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.integers(1, 300),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    ),
    data=st.data(),
)
def test_property_equals_partition(x, data):
    k = data.draw(st.integers(1, x.size))
    assert select.kth_largest_magnitude(jnp.asarray(x), k) == reference([x], k)


@pytest.mark.parametrize("fraction", [1e-5, 0.2, 0.5, 0.8, 0.999])
@pytest.mark.parametrize("distribution", ["normal", "integers", "two_scales"])
def test_one_pass_bracket_and_its_fallback_are_exact(distribution, fraction):
    """Large enough for the sampled bracket; hits and misses both give the exact answer."""
    rng = np.random.default_rng(3)
    n = 200_003
    x = {
        "normal": rng.standard_normal(n),
        "integers": rng.integers(0, 5, n),  # massive ties
        "two_scales": rng.exponential(size=n) * np.where(rng.random(n) < 0.5, 1e-6, 1.0),
    }[distribution].astype(np.float32)
    k = max(1, int(fraction * n))
    assert select.kth_largest_magnitude(jnp.asarray(x), k) == reference([x], k)


def test_bracket_histogram_counts_inside_and_above():
    just_above_two = np.nextafter(np.float32(2.0), np.float32(3.0))
    x = jnp.asarray([1.0, 2.0, 2.0, just_above_two, 3.0, 1e30, 0.5], jnp.float32)
    start = np.float32(2.0).view(np.uint32)
    histogram = np.asarray(select.bracket_histogram(x, start))
    assert histogram[0] == 2 and histogram[1] == 1  # 2.0 twice, then the next float
    assert histogram[select.BRACKET_BINS :].sum() == 2  # 3.0 is 2²² patterns up: above
    assert histogram.sum() == 5  # 1.0 and 0.5 are below and dropped
    assert select.resolve_bracket(histogram, 4, start) == (True, np.float32(2.0))
    assert select.resolve_bracket(histogram, 3, start) == (True, just_above_two)
    assert select.resolve_bracket(histogram, 6, start)[0] is False  # 6th is below the bracket
    assert select.resolve_bracket(histogram, 2, start)[0] is False  # 2nd is above it
