"""Learned merge coefficients: groups, spaces, gradients, resume, and the merge on disk."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmerge import checkpoints, training
from jaxmerge.errors import InputError
from jaxmerge.learning import coefficients as coef_lib
from jaxmerge.learning import gradient
from jaxmerge.learning.coefficients import CoefficientSpec
from jaxmerge.learning.pool import Pool, load_pool, preprocess
from jaxmerge.merging import MergeConfig, merge_checkpoints
from jaxmerge.methods import tree
from jaxmerge.methods.dare import dare_linear
from jaxmerge.methods.ties import ties
from jaxmerge.models import params, t5
from tests.tiny_t5 import TINY, fine_tune_like

LENGTHS = {"inputs": 32, "targets": 8}


def _tree(seed: int) -> dict:
    return params.flatten(params.unbox(t5.init_params(TINY, jax.random.key(seed))))


@pytest.fixture(scope="module")
def pool():
    base = _tree(0)
    # experts: the base plus small task vectors, as fine-tunes are
    experts = [
        {n: a + 0.05 * jax.random.normal(jax.random.key(10 + i), a.shape) for n, a in base.items()}
        for i in range(2)
    ]
    return Pool(["e0", "e1"], "base", experts, base, list(base))


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    targets = rng.integers(3, 200, (4, LENGTHS["targets"])).astype(np.int32)
    return {
        "encoder_input_tokens": rng.integers(3, 200, (4, LENGTHS["inputs"])).astype(np.int32),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": np.ones_like(targets),
    }


def test_groups_by_rule_and_errors():
    names = ["encoder/layers_0/mlp/wo/kernel", "encoder/layers_1/mlp/wo/kernel", "token/emb"]
    spec = CoefficientSpec("group", rules=((r"encoder/layers_0/.*", "l0"), (r".*layers_1.*", "l1")))
    grouping = coef_lib.groups(spec, names)
    assert grouping.names == ("l0", "l1", coef_lib.REST)
    assert [grouping.index[n] for n in names] == [0, 1, 2]
    with pytest.raises(InputError, match="--group_rule decoder/.*=d: matches no parameter"):
        coef_lib.groups(CoefficientSpec("group", rules=(("decoder/.*", "d"),)), names)
    assert coef_lib.groups(CoefficientSpec("tensor"), names).names == tuple(names)
    assert coef_lib.groups(CoefficientSpec("task"), names).names == ("all",)


@pytest.mark.parametrize("simplex_map", coef_lib.SIMPLEX_MAPS)
def test_simplex_coefficients_are_on_the_simplex(simplex_map):
    spec = CoefficientSpec(space="simplex", simplex_map=simplex_map)
    raw = jax.random.normal(jax.random.key(1), (5, 4)) * 3
    c = np.asarray(coef_lib.coefficients(spec, raw))
    assert np.all(c >= 0)
    np.testing.assert_allclose(c.sum(-1), 1.0, rtol=1e-6)
    uniform = coef_lib.initial_raw(spec, 5, 4)
    np.testing.assert_allclose(coef_lib.coefficients(spec, uniform), 0.25, rtol=1e-6)
    if simplex_map == "projection":  # a point on the simplex is its own projection
        point = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
        np.testing.assert_allclose(coef_lib.coefficients(spec, point), point, rtol=1e-6)


def test_clamp_and_init():
    spec = CoefficientSpec(init=0.5, clamp=(0.0, 1.0))
    raw = coef_lib.initial_raw(spec, 1, 3)
    assert np.all(raw == 0.5)
    np.testing.assert_array_equal(coef_lib.coefficients(spec, [[-1.0, 0.5, 2.0]]), [[0, 0.5, 1]])
    assert np.all(coef_lib.initial_raw(CoefficientSpec(), 2, 2) == 0.3)


@pytest.mark.parametrize("objective", gradient.OBJECTIVES)
def test_gradients_equal_finite_differences(pool, objective):
    spec = CoefficientSpec("group", rules=((r"encoder/.*", "encoder"),))
    grouping = coef_lib.groups(spec, pool.names)
    _, loss_of = gradient.make_step(spec, grouping, TINY, optax.adam(1e-3), objective)
    raw = jnp.asarray([[0.3, 0.6], [0.5, 0.2]], jnp.float32)
    batch = _batch()
    grad = np.asarray(jax.grad(loss_of)(raw, pool.checkpoints, pool.base, batch))
    eps = 1e-2
    for index in np.ndindex(raw.shape):
        step = np.zeros(raw.shape, np.float32)
        step[index] = eps
        up = float(loss_of(raw + step, pool.checkpoints, pool.base, batch))
        down = float(loss_of(raw - step, pool.checkpoints, pool.base, batch))
        assert grad[index] == pytest.approx((up - down) / (2 * eps), rel=0.05, abs=1e-4)


def test_entropy_objective_decreases(pool):
    spec = CoefficientSpec()
    grouping = coef_lib.groups(spec, pool.names)
    tx = optax.adam(0.05)
    step, loss_of = gradient.make_step(spec, grouping, TINY, tx, "entropy")
    raw = jnp.asarray(coef_lib.initial_raw(spec, 1, 2))
    batch = _batch(1)
    before = float(loss_of(raw, pool.checkpoints, pool.base, batch))
    opt_state = tx.init(raw)
    for _ in range(10):
        raw, opt_state, _ = step(raw, opt_state, pool.checkpoints, pool.base, batch)
    assert float(loss_of(raw, pool.checkpoints, pool.base, batch)) < before


def _fit(pool, steps, state_dir, kill_at=None):
    spec = CoefficientSpec()
    grouping = coef_lib.groups(spec, pool.names)
    tx = optax.adam(0.05)
    step, loss_of = gradient.make_step(spec, grouping, TINY, tx, "supervised")

    def batches(start):
        i = start
        while True:
            if i == kill_at:
                raise KeyboardInterrupt  # the run dies before step i + 1
            yield _batch(i)
            i += 1

    def fitness(raw):
        return -float(loss_of(raw, pool.checkpoints, pool.base, _batch(99)))

    raw0 = coef_lib.initial_raw(spec, 1, 2)
    return gradient.fit(
        step,
        raw0,
        tx,
        pool,
        batches,
        steps=steps,
        fitness=fitness,
        eval_period=2,
        save_period=1,
        state_dir=state_dir,
        log=lambda *_: None,
    )


def test_a_killed_fit_resumes_where_an_uninterrupted_one_ends(pool, tmp_path):
    whole = _fit(pool, 6, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):  # state is saved every step
        _fit(pool, 6, tmp_path / "parts", kill_at=3)
    resumed = _fit(pool, 6, tmp_path / "parts")
    np.testing.assert_array_equal(whole["raw"], resumed["raw"])
    assert whole["history"] == resumed["history"]
    assert resumed["steps_done"] == 6


@pytest.mark.parametrize("granularity", ["task", "group"])
def test_the_merge_engine_writes_the_bytes_the_learning_scored(tmp_path, granularity):
    tx = optax.adam(0.01)
    base = params.unbox(t5.init_params(TINY, jax.random.key(0)))
    paths = []
    for i in range(3):  # the base, then two fine-tune-like experts
        tree = fine_tune_like(base, i)
        paths.append(str(training.save_checkpoint(tmp_path / f"m{i}", 5, tree, tx.init(tree))))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    loaded = load_pool(paths[0], paths[1:], mesh)
    rules = ((r"decoder/.*", "decoder"),) if granularity == "group" else ()
    spec = CoefficientSpec(granularity, rules=rules)
    grouping = coef_lib.groups(spec, loaded.names)
    coefs = np.asarray([[0.37, 0.81], [-0.2, 1.3]][: len(grouping.names)], np.float32)
    in_memory = coef_lib.merge_as_engine(spec, coefs, grouping, loaded.checkpoints, loaded.base)
    traced = coef_lib.merge(spec, jnp.asarray(coefs), grouping, loaded.checkpoints, loaded.base)
    for name, array in traced.items():  # the differentiable twin: the same up to rounding
        np.testing.assert_allclose(array, in_memory[name], rtol=1e-5, atol=1e-7)
    config = MergeConfig(
        method="task_arithmetic",
        base=paths[0],
        experts=tuple(paths[1:]),
        output=str(tmp_path / "merged"),
        weight_rules=coef_lib.weight_rules(spec, coefs, grouping),
    )
    out = merge_checkpoints(config, quiet=True, log=lambda *_: None)
    with checkpoints.open(out) as reader:
        for name, array in in_memory.items():
            np.testing.assert_array_equal(reader.read_numpy(name), np.asarray(array), err_msg=name)


def test_ties_preprocessing_sums_to_the_ties_merge(pool):
    """AdaMerging++'s τ̃ᵢ: their sum over the agreeing count is TIES's τₘ, tensor by tensor,
    with the global (whole-model) trim the pool uses."""
    processed = preprocess(pool, "ties", density=0.3)
    thresholds = tree.global_thresholds(pool.checkpoints, pool.base, 0.3)
    for name in pool.names:
        experts = [c[name] for c in pool.checkpoints]
        vectors = [c[name] - pool.base[name] for c in processed.checkpoints]
        count = sum((v != 0).astype(jnp.float32) for v in vectors)
        merged = pool.base[name] + sum(vectors) / jnp.maximum(count, 1.0)
        expected = ties(experts, base=pool.base[name], density=0.3, lam=1.0, thresholds=thresholds)
        np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        kept = sum(int((v != 0).sum()) for v in vectors)
        assert kept <= 2 * 0.3 * experts[0].size + 2  # trimmed, then some disagree


def test_dare_preprocessing_is_the_dare_linear_merge(pool):
    processed = preprocess(pool, "dare", drop_rate=0.5, seed=3)
    for name in pool.names:
        experts = [c[name] for c in pool.checkpoints]
        key = tree.parameter_key(3, name)
        summed = pool.base[name] + sum(c[name] - pool.base[name] for c in processed.checkpoints)
        weights = jnp.ones(2)
        expected = dare_linear(
            experts, base=pool.base[name], key=key, drop_rate=0.5, weights=weights
        )
        np.testing.assert_allclose(summed, expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_preprocessing_errors(pool):
    with pytest.raises(InputError, match="--preprocess='trim': choose from none, ties, dare"):
        preprocess(pool, "trim")
    with pytest.raises(InputError, match="--preprocess=ties: needs a base"):
        preprocess(Pool(pool.paths, None, pool.checkpoints, None, pool.names), "ties")
    assert preprocess(pool, "none") is pool


@pytest.mark.parametrize("space, simplex_map", [("task_vector", "softmax"), ("simplex", "softmax"),
                                                ("simplex", "projection")])  # fmt: skip
def test_init_weights_start_each_checkpoint_where_given(space, simplex_map):
    spec = CoefficientSpec(space=space, simplex_map=simplex_map, init_weights=(2.0, 0.0, 2.0))
    spec.check()
    got = np.asarray(coef_lib.coefficients(spec, coef_lib.initial_raw(spec, 2, 3)))
    want = [2.0, 0.0, 2.0] if space == "task_vector" else [0.5, 0.0, 0.5]
    np.testing.assert_allclose(got, [want, want], atol=1e-4)
    with pytest.raises(InputError, match="2 value"):
        coef_lib.initial_raw(dataclasses.replace(spec, init_weights=(1.0, 1.0)), 1, 3)
    with pytest.raises(InputError, match="give one of them"):
        dataclasses.replace(spec, init=0.1).check()
    with pytest.raises(InputError, match=">= 0"):
        CoefficientSpec(space="simplex", init_weights=(1.0, -1.0)).check()
