"""Lifts a per-tensor merge method to whole models (pytrees).

`merge_trees` checks that every model has the same parameters, shapes and
dtypes, derives each parameter's random key from (seed, parameter name),
computes the whole-model TIES thresholds for `trim="global"`, calls the
method on each parameter, and casts each result back to its storage dtype
once, at the end. It is traceable: `jax.jit(merge_trees, static_argnames=...)`
and `jax.eval_shape` work.
"""

import functools
import inspect
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge.errors import InputError
from jaxmerge.methods import METHODS, MergeMethod, select
from jaxmerge.methods._inputs import as_float32, check_range

PyTree = Any
TRIMS = ("global", "tensor")


def get_method(method: str | MergeMethod) -> MergeMethod:
    """METHODS[name], or an InputError listing the registered names."""
    if isinstance(method, MergeMethod):
        return method
    try:
        return METHODS[method]
    except KeyError:
        raise InputError(
            f"unknown merge method {method!r}; choose from {', '.join(METHODS)}"
        ) from None


def hparam_defaults(method: str | MergeMethod) -> dict:
    """The paper defaults of a method's hyperparameters: its signature's, the one source."""
    spec = get_method(method)
    parameters = inspect.signature(spec.merge_tensor).parameters
    defaults = {h: parameters[h].default for h in spec.hparams if h in parameters}
    if spec.global_trim:
        defaults["trim"] = "global"
    return defaults


def parameter_key(seed: int, name: str) -> jax.Array:
    """PRNG key of one parameter: fold_in(key(seed), crc32(name)).

    Depends only on the seed and the name, never on the device count, the chunk
    or the order of parameters; experts are folded in by the method.
    """
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def parameter_names(tree: PyTree) -> list[str]:
    """'/'-joined paths of the leaves, e.g. 'encoder/layers_0/mlp/wi_0/kernel'."""
    leaves_with_paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ["/".join(_path_part(part) for part in path) for path, _ in leaves_with_paths]


def _path_part(entry) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _check_models(method_name: str, experts, base) -> tuple[list[str], Any]:
    models = ([("base", base)] if base is not None else []) + [
        (f"expert {i}", e) for i, e in enumerate(experts)
    ]
    reference_label, reference = models[0]
    names = parameter_names(reference)
    treedef = jax.tree_util.tree_structure(reference)
    reference_leaves = jax.tree_util.tree_leaves(reference)
    for label, model in models[1:]:
        if jax.tree_util.tree_structure(model) != treedef:
            other = set(parameter_names(model))
            missing = sorted(set(names) - other)
            extra = sorted(other - set(names))
            detail = (
                f"lacks {missing[:3]}" if missing else f"has extra {extra[:3]}" if extra else ""
            )
            raise InputError(
                f"{method_name}: {label} does not have the parameters of {reference_label}"
                f" ({detail or 'different tree structure'})"
            )
        for name, ref_leaf, leaf in zip(
            names, reference_leaves, jax.tree_util.tree_leaves(model), strict=True
        ):
            if tuple(leaf.shape) != tuple(ref_leaf.shape):
                raise InputError(
                    f"{method_name}: parameter {name!r} has shape {tuple(leaf.shape)} in {label}"
                    f" but {tuple(ref_leaf.shape)} in {reference_label}"
                )
            if jnp.dtype(leaf.dtype) != jnp.dtype(ref_leaf.dtype):
                raise InputError(
                    f"{method_name}: parameter {name!r} is {jnp.dtype(leaf.dtype)} in {label}"
                    f" but {jnp.dtype(ref_leaf.dtype)} in {reference_label}"
                )
    return names, treedef


def global_thresholds(experts: Sequence[PyTree], base: PyTree, density: float) -> list[jax.Array]:
    """tᵢ = k-th largest |τᵢ| over ALL parameters of expert i, k = ⌈density · n⌉."""
    base_leaves = jax.tree_util.tree_leaves(base)
    n = sum(int(np.prod(leaf.shape)) for leaf in base_leaves)
    k = select.count_for_fraction(density, n)
    return [
        _expert_threshold(jax.tree_util.tree_leaves(expert), base_leaves, k) for expert in experts
    ]


@functools.partial(jax.jit, static_argnums=2)
def _expert_threshold(expert_leaves, base_leaves, k: int) -> jax.Array:
    """The k-th largest |θᵢ − θ₀| over one expert's leaves, jitted with the leaves as
    arguments. Called eagerly, `kth_largest_magnitude`'s cond compiled anew for every
    expert with its task vectors as constants; a learn_quality run at micro, after a
    25-cell TIES grid of such merges, segfaulted in XLA's compiler on the next one."""
    pairs = zip(expert_leaves, base_leaves, strict=True)
    task_vectors = [as_float32(e) - as_float32(b) for e, b in pairs]
    return select.kth_largest_magnitude(task_vectors, k)


def merge_trees(
    method: str | MergeMethod,
    experts: Sequence[PyTree],
    *,
    base: PyTree | None = None,
    weights=None,
    seed: int = 0,
    **hparams,
) -> PyTree:
    """Merges whole models with a registered method; returns a tree like the inputs.

    Args:
      method: a name in METHODS, or a MergeMethod.
      experts: K pytrees with identical structure, shapes and dtypes.
      base: θ₀, a pytree like the experts (required by methods with task vectors).
      weights: float[K] or None.
      seed: seeds the random methods; parameter `name` of expert i draws from
        fold_in(parameter_key(seed, name), i).
      **hparams: the method's hyperparameters (see METHODS[name].hparams); for
        ties also trim="global" (default) or "tensor".
    Returns:
      The merged pytree; each leaf keeps its input dtype (math in float32).
    """
    spec = get_method(method)
    name = spec.merge_tensor.__name__
    unknown = sorted(set(hparams) - set(spec.hparams))
    if unknown:
        takes = ", ".join(spec.hparams) or "no hyperparameters besides weights"
        raise InputError(f"{name}: unknown hyperparameter(s) {', '.join(unknown)}; takes {takes}")
    if not isinstance(experts, list | tuple):
        raise InputError(f"{name}: experts must be a list of models, got {type(experts).__name__}")
    if len(experts) < spec.min_experts or (
        spec.max_experts is not None and len(experts) > spec.max_experts
    ):
        raise InputError(
            f"{name}: needs {spec.min_experts}"
            f"{'' if spec.max_experts == spec.min_experts else ' or more'} expert(s),"
            f" got {len(experts)}"
        )
    if spec.needs_base and base is None:
        raise InputError(f"{name}: needs a base model (task vectors are expert − base)")
    names, treedef = _check_models(name, experts, base if spec.needs_base else None)

    tensor_hparams = dict(hparams)
    thresholds = None
    if spec.global_trim:
        trim = tensor_hparams.pop("trim", "global")
        if trim not in TRIMS:
            raise InputError(f"{name}: trim={trim!r}; choose from {', '.join(TRIMS)}")
        if trim == "global":
            density = tensor_hparams.get("density", hparam_defaults(spec)["density"])
            check_range(name, "density", density, 0.0, 1.0)
            thresholds = global_thresholds(experts, base, density)

    base_leaves = jax.tree_util.tree_leaves(base) if spec.needs_base else [None] * len(names)
    expert_leaves = [jax.tree_util.tree_leaves(e) for e in experts]
    merged = []
    for j, parameter in enumerate(names):
        kwargs = dict(tensor_hparams)
        if spec.needs_base:
            kwargs["base"] = base_leaves[j]
        if weights is not None:
            kwargs["weights"] = weights
        if spec.random:
            kwargs["key"] = parameter_key(seed, parameter)
        if thresholds is not None:
            kwargs["thresholds"] = thresholds
        tensors = [leaves[j] for leaves in expert_leaves]
        try:
            result = spec.merge_tensor(tensors, **kwargs)
        except InputError as e:
            raise InputError(f"parameter {parameter!r}: {e}") from None
        reference = base_leaves[j] if spec.needs_base else tensors[0]
        merged.append(result.astype(reference.dtype))
    return jax.tree_util.tree_unflatten(treedef, merged)
