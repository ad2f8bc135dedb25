"""Conformance suite: every registered method must pass every test here.

Parametrised over METHODS, with each method's hyperparameters at their
defaults; no special cases by name beyond the expert count a method requires.
"""

import ast
import functools
import importlib
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxmerge.methods import METHODS, merge_trees

NAMES = sorted(METHODS)
# Methods whose result includes a float reduction over a whole tensor (norms, dot
# products): on 8 devices XLA sums in another order, so they agree to rounding.
FLOAT_REDUCTIONS = {"model_stock", "slerp"}


def make_model(rng, scale=1.0, offset=None):
    """A small model: bf16 kernel, f32 scale, f16 embedding — every leaf's first axis divides 8."""
    shapes = {
        "dense": {"kernel": ((16, 8), jnp.bfloat16)},
        "norm": {"scale": ((8,), jnp.float32)},
        "embed": ((32, 4), jnp.float16),
    }

    def leaf(spec, path):
        shape, dtype = spec
        value = rng.standard_normal(shape) * scale
        if offset is not None:
            value = value + np.asarray(_get(offset, path), np.float32)
        return jnp.asarray(value, dtype)

    return {
        "dense": {"kernel": leaf(shapes["dense"]["kernel"], ("dense", "kernel"))},
        "norm": {"scale": leaf(shapes["norm"]["scale"], ("norm", "scale"))},
        "embed": leaf(shapes["embed"], ("embed",)),
    }


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def models(method, seed=0):
    """(base, experts) with the number of experts the method accepts (3, or 2 for slerp)."""
    rng = np.random.default_rng(seed)
    base = make_model(rng)
    count = METHODS[method].max_experts or 3
    experts = [make_model(rng, scale=0.1, offset=base) for _ in range(count)]
    return base, experts


def run(method, experts, base, seed=0):
    return merge_trees(method, experts, base=base, seed=seed)


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("method", NAMES)
def test_keeps_structure_shapes_and_dtypes(method):
    base, experts = models(method)
    merged = run(method, experts, base)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    for got, want in zip(jax.tree.leaves(merged), jax.tree.leaves(base), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.all(np.isfinite(np.asarray(got, np.float32)))


@pytest.mark.parametrize("method", NAMES)
def test_identical_inputs_return_the_input(method):
    base, experts = models(method)
    merged = run(method, [base] * len(experts), base)
    assert_trees_equal(merged, base)


@pytest.mark.parametrize("method", NAMES)
def test_jit_equals_eager(method):
    # float32 models, so that a last-bit difference in a fused float32 reduction is
    # measured as such instead of flipping a bf16 rounding.
    base, experts = jax.tree.map(lambda x: x.astype(jnp.float32), models(method))
    eager = run(method, experts, base)
    jitted = jax.jit(functools.partial(run, method))(experts, base)
    tolerance = 1e-5 if method in FLOAT_REDUCTIONS else 1e-6
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=tolerance, atol=tolerance),
        jitted,
        eager,
    )


@pytest.mark.parametrize("method", NAMES)
def test_runs_under_eval_shape(method):
    base, experts = models(method)
    shapes = jax.eval_shape(functools.partial(run, method), experts, base)
    assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes) == jax.tree.map(
        lambda x: (x.shape, x.dtype), base
    )


@pytest.mark.parametrize("method", NAMES)
def test_same_values_on_one_and_eight_devices(method):
    base, experts = models(method)
    mesh = jax.make_mesh((8,), ("model",), axis_types=(AxisType.Auto,))
    shard = lambda tree: jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("model"))), tree
    )
    merge = jax.jit(functools.partial(run, method))
    one = merge(jax.device_put(experts, jax.devices()[0]), jax.device_put(base, jax.devices()[0]))
    eight = merge(shard(experts), shard(base))
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(eight))
    if method in FLOAT_REDUCTIONS:
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(
                np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=1e-2, atol=1e-3
            ),
            eight,
            one,
        )
    else:
        assert_trees_equal(eight, one)


@pytest.mark.parametrize("method", NAMES)
def test_deterministic_for_a_seed(method):
    base, experts = models(method)
    assert_trees_equal(run(method, experts, base, seed=3), run(method, experts, base, seed=3))
    if METHODS[method].random:
        a, b = run(method, experts, base, seed=3), run(method, experts, base, seed=4)
        assert any(
            np.any(np.asarray(x) != np.asarray(y))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )


@pytest.mark.parametrize("method", NAMES)
def test_every_method_states_its_equation_and_paper(method):
    function = METHODS[method].merge_tensor
    text = (importlib.import_module(function.__module__).__doc__ or "") + (function.__doc__ or "")
    assert "θ = " in text, f"{method}: no equation in its docstrings"
    assert re.search(r"\b(19|20)\d\d\b", text), f"{method}: no paper (with its year) cited"


@pytest.mark.parametrize("method", NAMES)
def test_gin_config_states_the_paper_defaults(method):
    """gin_configs/methods/<name>.gin binds exactly the signature's defaults."""
    from jaxmerge.methods import hparam_defaults

    path = pathlib.Path(__file__).resolve().parents[1] / "gin_configs" / "methods" / f"{method}.gin"
    bindings = dict(re.findall(r"^merge\.MergeConfig\.(\w+) = (.+)$", path.read_text(), re.M))
    assert bindings.pop("method") == repr(method)
    assert {k: ast.literal_eval(v) for k, v in bindings.items()} == hparam_defaults(method)
