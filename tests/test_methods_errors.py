"""Bad input gets an InputError (a ValueError) naming the parameter path and shapes."""

import jax
import jax.numpy as jnp
import pytest

from jaxmerge.errors import InputError
from jaxmerge.methods import merge_trees
from jaxmerge.methods.ties import ties

BASE = {"encoder": {"kernel": jnp.zeros((4, 3)), "scale": jnp.zeros(3)}}


def expert(**changes):
    tree = jax.tree.map(lambda x: x + 1, BASE)
    tree["encoder"].update(changes)
    return tree


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


def test_mismatched_tree_structure_names_the_missing_parameter():
    broken = {"encoder": {"kernel": jnp.ones((4, 3))}}
    with pytest.raises(InputError, match=r"expert 0 .*lacks \['encoder/scale'\]"):
        merge_trees("task_arithmetic", [broken], base=BASE)


def test_mismatched_shapes_name_the_parameter_and_both_shapes():
    with pytest.raises(
        InputError, match=r"'encoder/kernel' has shape \(3, 4\) in expert 1 but \(4, 3\)"
    ):
        merge_trees("ties", [expert(), expert(kernel=jnp.ones((3, 4)))], base=BASE)


def test_mismatched_dtypes_name_the_parameter():
    with pytest.raises(
        InputError, match=r"'encoder/scale' is float32 in expert 1 but bfloat16 in expert 0"
    ):
        merge_trees("average", [expert(scale=jnp.ones(3, jnp.bfloat16)), expert()])


def test_zero_experts():
    with pytest.raises(InputError, match="needs 1 or more expert"):
        merge_trees("task_arithmetic", [], base=BASE)


def test_missing_base():
    with pytest.raises(InputError, match="needs a base model"):
        merge_trees("ties", [expert()])


@pytest.mark.parametrize(
    ("method", "hparams", "message"),
    [
        ("ties", {"density": 1.5}, r"density=1.5 is outside \[0.0, 1.0\]"),
        ("ties", {"density": -0.1}, r"density=-0.1 is outside"),
        ("breadcrumbs", {"gamma": 2.0}, r"gamma=2.0 is outside"),
        ("dare_linear", {"drop_rate": 1.0}, r"drop_rate=1.0 is outside \[0.0, 1.0\)"),
        ("dare_ties", {"drop_rate": -0.5}, r"drop_rate=-0.5 is outside"),
        ("della", {"density": 0.95, "epsilon": 0.1}, r"keep probabilities outside"),
        ("ties", {"trim": "layer"}, r"trim='layer'; choose from global, tensor"),
        ("ties", {"drop_rate": 0.5}, r"unknown hyperparameter\(s\) drop_rate; takes density"),
    ],
)
def test_out_of_range_hyperparameters(method, hparams, message):
    with pytest.raises(InputError, match=message):
        merge_trees(method, [expert(), expert()], base=BASE, **hparams)


def test_per_tensor_error_is_prefixed_with_the_parameter_path():
    with pytest.raises(InputError, match=r"parameter 'encoder/kernel': .*weights has shape \(3,\)"):
        merge_trees("task_arithmetic", [expert(), expert()], base=BASE, weights=[1.0, 2.0, 3.0])


def test_slerp_needs_exactly_two_models():
    with pytest.raises(InputError, match="slerp: needs 2 expert"):
        merge_trees("slerp", [expert(), expert(), expert()])
    with pytest.raises(InputError, match="slerp: needs exactly 2"):
        from jaxmerge.methods.slerp import slerp

        slerp([jnp.ones(2)])


def test_unknown_method_lists_the_registry():
    with pytest.raises(InputError, match="unknown merge method 'tie'; choose from average, "):
        merge_trees("tie", [expert()], base=BASE)


def test_stacked_experts_are_refused_with_the_reason():
    with pytest.raises(InputError, match="sequence of arrays.*not one array of shape"):
        ties(jnp.ones((2, 3)), base=jnp.zeros(3))
