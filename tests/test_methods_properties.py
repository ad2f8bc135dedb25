"""hypothesis properties the papers' equations imply."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxmerge.methods import METHODS, merge_trees

# XLA on CPU flushes subnormal floats to zero (as accelerators do), so inputs stay normal.
values = st.floats(-4.0, 4.0, width=32, allow_nan=False, allow_subnormal=False)
vector = hnp.arrays(np.float32, 12, elements=values)
SETTINGS = settings(max_examples=25, deadline=None)
WITH_LAM = sorted(name for name, m in METHODS.items() if "lam" in m.hparams)
DETERMINISTIC = ["average", "task_arithmetic", "ties", "breadcrumbs", "model_stock"]


@SETTINGS
@given(base=vector, deltas=st.lists(vector, min_size=2, max_size=4), data=st.data())
def test_lambda_zero_gives_the_base(base, deltas, data):
    method = data.draw(st.sampled_from(WITH_LAM))
    experts = [jnp.asarray(base + d) for d in deltas]
    out = merge_trees(method, experts, base=jnp.asarray(base), lam=0.0)
    np.testing.assert_array_equal(np.asarray(out), base)


@SETTINGS
@given(
    base=vector,
    magnitudes=st.lists(
        hnp.arrays(np.float32, 12, elements=st.floats(0.125, 4.0, width=32)), min_size=1, max_size=4
    ),
    signs=hnp.arrays(np.float32, 12, elements=st.sampled_from([-1.0, 1.0])),
)
def test_ties_at_full_density_without_conflicts_is_task_arithmetic(base, magnitudes, signs):
    # every τᵢ nonzero with the same sign per entry: the disjoint mean divides the
    # sum by K, so TIES(λ) = task arithmetic(λ / K).
    experts = [jnp.asarray(base) + jnp.asarray(signs * m) for m in magnitudes]
    count = len(experts)
    got = merge_trees("ties", experts, base=jnp.asarray(base), density=1.0, lam=1.0)
    want = merge_trees("task_arithmetic", experts, base=jnp.asarray(base), lam=1.0 / count)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    base=vector,
    deltas=st.lists(vector, min_size=2, max_size=4),
    weights=st.lists(st.floats(0.1, 2.0), min_size=4, max_size=4),
    data=st.data(),
)
def test_permuting_experts_with_their_weights_changes_nothing(base, deltas, weights, data):
    method = data.draw(st.sampled_from(DETERMINISTIC))
    experts = [jnp.asarray(base + d) for d in deltas]
    w = np.asarray(weights[: len(experts)], np.float32)
    order = data.draw(st.permutations(range(len(experts))))
    kwargs = {} if method == "model_stock" else {"weights": w}
    permuted = {} if method == "model_stock" else {"weights": w[list(order)]}
    a = merge_trees(method, experts, base=jnp.asarray(base), **kwargs)
    b = merge_trees(method, [experts[i] for i in order], base=jnp.asarray(base), **permuted)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(a=vector, b=vector)
def test_slerp_endpoints(a, b):
    experts = [jnp.asarray(a), jnp.asarray(b)]
    np.testing.assert_array_equal(np.asarray(merge_trees("slerp", experts, t=0.0)), a)
    np.testing.assert_allclose(np.asarray(merge_trees("slerp", experts, t=1.0)), b, atol=1e-6)
