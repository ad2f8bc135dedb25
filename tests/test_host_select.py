"""host_select's numba histograms equal XLA's (select.high_histogram / low_histogram of
the float32 task vector), bit for bit, including subnormals, zeros, overflow and NaN/Inf."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxmerge.merging import host_select, thresholds
from jaxmerge.methods import select

BF16 = np.dtype(ml_dtypes.bfloat16)
SPECIAL = [0.0, -0.0, 1e-39, -3e-39, 1.1754944e-38, 2e-38, 3e38, -3e38, np.inf, -np.inf, np.nan]


def inputs(dtype, shape, seed, special: bool):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape).astype(np.float32) * 0.02
    expert = base + rng.standard_normal(shape).astype(np.float32) * 0.002
    if special:  # sprinkle edge values into both, at random places
        for array in (base, expert):
            flat = array.reshape(-1)
            places = rng.choice(flat.size, size=min(flat.size, 64), replace=False)
            flat[places] = rng.choice(np.asarray(SPECIAL, np.float32), size=places.size)
    return jnp.asarray(expert.astype(dtype)), jnp.asarray(base.astype(dtype))


def xla_high(expert, base):
    return np.asarray(
        jax.jit(lambda e, b: select.high_histogram(thresholds._task_vector(e, b)))(expert, base)
    )


def xla_low(expert, base, digit):
    fn = jax.jit(lambda e, b, d: select.low_histogram(thresholds._task_vector(e, b), d))
    return np.asarray(fn(expert, base, np.uint32(digit)))


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float32)], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("shape", [(1,), (7,), (4096,), (3, 4099), (64, 1000)])
@pytest.mark.parametrize("special", [False, True], ids=["normal", "special"])
def test_histograms_equal_xla(dtype, shape, special):
    expert, base = inputs(dtype, shape, seed=sum(shape), special=special)
    assert host_select.usable([expert, base])
    high = host_select.high_histogram(expert, base)
    np.testing.assert_array_equal(high, xla_high(expert, base))
    for digit in {int(np.argmax(high)), int(np.nonzero(high)[0][-1]), 0}:  # busiest, top, zero
        np.testing.assert_array_equal(
            host_select.low_histogram(expert, base, digit), xla_low(expert, base, digit)
        )


def test_thresholds_equal_on_host_and_with_xla():
    experts, base = [], None
    for seed in range(3):
        expert, base = inputs(BF16, (256, 300), seed=7, special=False)
        experts.append(jnp.asarray((np.asarray(expert, np.float32) * (1 + seed)).astype(BF16)))
    on_host = thresholds.tensor_thresholds(experts, base, 0.2)
    k = select.count_for_fraction(0.2, base.size)
    expected = [
        np.sort(np.abs(np.asarray(thresholds._task_vector(e, base))).ravel())[-k] for e in experts
    ]
    np.testing.assert_array_equal(np.asarray(on_host), np.asarray(expected, np.float32))


def test_usable_only_for_one_cpu_device_and_bfloat16_or_float32():
    x = jnp.zeros((4, 4), jnp.bfloat16)
    assert host_select.usable([x, x])
    assert not host_select.usable([x.astype(jnp.float16)] * 2)
    assert not host_select.usable([x, x.astype(jnp.float32)])  # a dtype mix
    if jax.device_count() > 1:
        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        spread = jax.device_put(
            jnp.zeros((jax.device_count(), 4), jnp.bfloat16),
            jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")),
        )
        assert not host_select.usable([spread, spread])


@pytest.mark.parametrize("dtype", [BF16, np.dtype(np.float32)], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("density", [0.001, 0.2, 0.9, 1.0])
def test_high_pass_candidates_give_the_exact_low_histogram(dtype, density):
    """The sampled candidates, when they hold the k-th largest's bucket, give exactly the
    second pass's histogram; either way low_histogram_after equals the second pass."""
    expert, base = inputs(dtype, (1024, host_select.MIN_SAMPLED_SIZE // 1024 + 7), 3, False)
    k = select.count_for_fraction(density, base.size)
    passed = host_select.high_pass(expert, base, k)
    np.testing.assert_array_equal(passed.histogram, host_select.high_histogram(expert, base))
    digit, _ = select.resolve_digit(passed.histogram, k)
    if density == 0.2:  # TIES' default: the sample finds the bucket (fixed seed)
        assert passed.low_histogram(int(digit)) is not None
    outside = {d for d in (passed.first - 1, passed.last + 1) if 0 <= d < select.HIGH_BINS}
    for d in {int(digit), *outside}:
        np.testing.assert_array_equal(
            host_select.low_histogram_after(expert, base, passed, d),
            host_select.low_histogram(expert, base, d),
        )


def test_tensor_thresholds_on_host_equal_a_sort():
    expert, base = inputs(BF16, (1024, host_select.MIN_SAMPLED_SIZE // 1024), 5, False)
    for density in (0.05, 0.2, 0.5):
        k = select.count_for_fraction(density, base.size)
        magnitude = np.abs(np.asarray(thresholds._task_vector(expert, base))).ravel()
        (threshold,) = np.asarray(thresholds.tensor_thresholds([expert], base, density))
        assert threshold == np.sort(magnitude)[-k]
