"""Merge coefficients to learn: which parameters share one, what space they live in.

K checkpoints θ₁ … θ_K (experts, or a pool of generalists) and a base θ₀. Every tensor
belongs to a group g (`granularity`): one group for the whole model ("task": one
coefficient per checkpoint, as the Recycle paper and task-wise AdaMerging), one per
tensor ("tensor"), or one per `(regex, group)` rule ("group", e.g. per layer, layer-wise
AdaMerging). The raw parameters r are float32[G, K]; the coefficients c = f(r):

    space "task_vector"   θ = θ₀ + Σᵢ c_{g,i} (θᵢ − θ₀),  c = clip(r, *clamp)
                          (AdaMerging, Yang et al. 2024, arXiv:2310.02575)
    space "simplex"       θ = Σᵢ c_{g,i} θᵢ,  c_g on the simplex Σᵢ c_{g,i} = 1:
                          softmax(r_g) or the Euclidean projection of r_g onto it
                          (Khalifa et al. 2024, "If You Can't Use Them, Recycle Them")

The merged tensor is computed by the merge methods' own code (`task_arithmetic` with
weights c_g and λ = 1; `average` with weights c_g), so the merge engine, given the same
coefficients as per-parameter weights, writes the very bytes that were scored. Pure
functions of arrays; everything here is traceable and differentiable in r.
"""

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge.errors import InputError
from jaxmerge.methods import METHODS

GRANULARITIES = ("task", "tensor", "group")
SPACES = ("task_vector", "simplex")
SIMPLEX_MAPS = ("softmax", "projection")
REST = "*"  # the group of tensors that no rule matches
# The merge method each space is, and the engine runs to write the result.
METHOD_OF_SPACE = {"task_vector": "task_arithmetic", "simplex": "average"}
DEFAULT_INIT = {"task_vector": 0.3}  # AdaMerging's λ init; the simplex starts uniform


@dataclasses.dataclass(frozen=True)
class CoefficientSpec:
    """How coefficients are shared and parametrised (see the module docstring)."""

    granularity: str = "task"
    space: str = "task_vector"
    simplex_map: str = "softmax"
    init: float | None = None  # task_vector: every coefficient (default 0.3)
    # One initial coefficient per checkpoint, for every group: task_vector λᵢ, or simplex
    # weights (≥ 0, normalized; softmax starts at log wᵢ, a zero weight at log 1e-4).
    init_weights: tuple[float, ...] | None = None
    clamp: tuple[float, float] | None = None  # task_vector: clip coefficients to [lo, hi]
    rules: tuple[tuple[str, str], ...] = ()  # granularity "group": (regex, group), first wins

    def check(self) -> None:
        for field, choices in (
            ("granularity", GRANULARITIES),
            ("space", SPACES),
            ("simplex_map", SIMPLEX_MAPS),
        ):
            if getattr(self, field) not in choices:
                value = getattr(self, field)
                raise InputError(f"--{field}={value!r}: choose from {', '.join(choices)}")
        if self.granularity == "group" and not self.rules:
            raise InputError("--granularity group needs --group_rule REGEX=GROUP rules")
        if self.clamp is not None and not self.clamp[0] <= self.clamp[1]:
            raise InputError(f"--clamp {self.clamp}: the low end exceeds the high end")
        if self.init_weights is not None:
            if self.init is not None:
                raise InputError("--init and --init_weights: give one of them")
            weights = np.asarray(self.init_weights, np.float64)
            if not np.all(np.isfinite(weights)):
                raise InputError(f"--init_weights {list(self.init_weights)}: not finite")
            if self.space == "simplex" and (np.any(weights < 0) or weights.sum() <= 0):
                raise InputError(
                    f"--init_weights {list(self.init_weights)}: simplex weights must be "
                    ">= 0 and not all 0"
                )


@dataclasses.dataclass(frozen=True)
class Groups:
    """names[j]'s coefficients are row index[names[j]] of the [G, K] matrix."""

    names: tuple[str, ...]  # the G group names, in row order
    index: Mapping[str, int]  # parameter name -> row


def groups(spec: CoefficientSpec, parameter_names: Sequence[str]) -> Groups:
    """The groups of `parameter_names` under `spec`; a rule matching nothing is an error."""
    if spec.granularity == "task":
        return Groups(("all",), {n: 0 for n in parameter_names})
    if spec.granularity == "tensor":
        return Groups(tuple(parameter_names), {n: i for i, n in enumerate(parameter_names)})
    compiled = []
    for pattern, group in spec.rules:
        try:
            compiled.append((re.compile(pattern), group))
        except re.error as e:
            raise InputError(f"--group_rule {pattern}={group}: bad regex ({e})") from None
    order: list[str] = []
    assignment = {}
    for name in parameter_names:
        group = next((g for rx, g in compiled if rx.fullmatch(name)), REST)
        if group not in order:
            order.append(group)
        assignment[name] = order.index(group)
    for pattern, group in spec.rules:
        if not any(re.fullmatch(pattern, n) for n in parameter_names):
            raise InputError(f"--group_rule {pattern}={group}: matches no parameter")
    return Groups(tuple(order), assignment)


# softmax's raw value of a zero initial weight: e^-9.2 = 1e-4 of a weight-1 checkpoint
ZERO_WEIGHT_FLOOR = 1e-4


def initial_raw(spec: CoefficientSpec, num_groups: int, num_checkpoints: int) -> np.ndarray:
    """float32[G, K]: every coefficient `init` (task vectors), or uniform 1/K (simplex), or
    `init_weights` in every row (their raw preimage: log w for softmax, w for the rest)."""
    if spec.init_weights is not None:
        weights = np.asarray(spec.init_weights, np.float64)
        if weights.shape != (num_checkpoints,):
            raise InputError(
                f"--init_weights: {weights.size} value(s) for {num_checkpoints} checkpoints"
            )
        if spec.space == "simplex":
            weights = weights / weights.sum()
            if spec.simplex_map == "softmax":
                weights = np.log(np.maximum(weights, ZERO_WEIGHT_FLOOR * weights.max()))
        return np.tile(weights.astype(np.float32), (num_groups, 1))
    if spec.space == "simplex":
        if spec.init is not None:
            raise InputError("--init applies to --space task_vector (the simplex starts at 1/K)")
        # softmax(0) and the projection of 1/K are both uniform
        value = 0.0 if spec.simplex_map == "softmax" else 1.0 / num_checkpoints
    else:
        value = DEFAULT_INIT["task_vector"] if spec.init is None else spec.init
    return np.full((num_groups, num_checkpoints), value, np.float32)


def project_to_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of each row of v onto {x ≥ 0, Σ x = 1} (Duchi et al. 2008)."""
    k = v.shape[-1]
    u = -jnp.sort(-v, axis=-1)  # descending
    cumulative = jnp.cumsum(u, axis=-1) - 1.0
    ranks = jnp.arange(1, k + 1, dtype=v.dtype)
    support = u - cumulative / ranks > 0
    rho = jnp.sum(support, axis=-1, keepdims=True)  # ≥ 1: the largest entry always counts
    theta = jnp.take_along_axis(cumulative, rho.astype(jnp.int32) - 1, axis=-1) / rho
    return jnp.maximum(v - theta, 0.0)


def coefficients(spec: CoefficientSpec, raw: jax.Array) -> jax.Array:
    """c = f(r), float32[G, K] (see the module docstring)."""
    raw = jnp.asarray(raw, jnp.float32)
    if spec.space == "simplex":
        if spec.simplex_map == "softmax":
            return jax.nn.softmax(raw, axis=-1)
        return project_to_simplex(raw)
    if spec.clamp is not None:
        return jnp.clip(raw, *spec.clamp)
    return raw


def merge_tensor(spec: CoefficientSpec, weights: jax.Array, experts, base) -> jax.Array:
    """One tensor merged with its group's coefficients `weights` (float32[K]), float32."""
    method = METHODS[METHOD_OF_SPACE[spec.space]]
    if spec.space == "simplex":
        return method.merge_tensor(experts, weights=weights)
    return method.merge_tensor(experts, base=base, weights=weights, lam=1.0)


def merge(
    spec: CoefficientSpec,
    coefs: jax.Array,
    grouping: Groups,
    experts: Sequence[Mapping[str, jax.Array]],
    base: Mapping[str, jax.Array] | None,
) -> dict[str, jax.Array]:
    """{name: merged tensor in the base's (or first checkpoint's) dtype}, flat names."""
    reference = base if base is not None else experts[0]
    return {
        name: merge_tensor(
            spec,
            coefs[grouping.index[name]],
            [e[name] for e in experts],
            None if base is None else base[name],
        ).astype(reference[name].dtype)
        for name in reference
    }


def merge_as_engine(
    spec: CoefficientSpec,
    coefs,
    grouping: Groups,
    experts: Sequence[Mapping[str, jax.Array]],
    base: Mapping[str, jax.Array] | None,
) -> dict[str, jax.Array]:
    """`merge`'s values, each tensor computed by the merge engine's own kernel
    (`merging.kernels.merge_kernel`), so they are the bits `jaxmerge merge` writes for the
    same coefficients (`weight_rules`). What candidates are scored with; `merge` is its
    differentiable twin, traced inside the gradient step."""
    method_name = METHOD_OF_SPACE[spec.space]
    reference = base if base is not None else experts[0]
    coefs = jnp.asarray(coefs, jnp.float32)
    merged = {}
    for name in reference:
        kernel = _engine_kernel(method_name, jnp.dtype(reference[name].dtype).name)
        base_tensor = None if base is None or not METHODS[method_name].needs_base else base[name]
        weights = coefs[grouping.index[name]]
        merged[name] = kernel([e[name] for e in experts], base_tensor, weights, None, None)
    return merged


@functools.cache
def _engine_kernel(method_name: str, dtype_name: str):
    from jaxmerge.merging.kernels import merge_kernel

    return merge_kernel(METHODS[method_name], {}, jnp.dtype(dtype_name))


def weight_rules(
    spec: CoefficientSpec, coefs: np.ndarray, grouping: Groups
) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """Per-parameter weights for the merge engine (`MergeConfig.weight_rules`): one exact
    rule per parameter, so every tensor gets its group's coefficients."""
    coefs = np.asarray(coefs, np.float32)
    return tuple(
        (re.escape(name), tuple(float(w) for w in coefs[row]))
        for name, row in grouping.index.items()
    )
