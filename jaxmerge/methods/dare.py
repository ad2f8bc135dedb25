"""DARE: Drop And REscale (Yu et al. 2024, "Language models are Super Mario:
absorbing abilities from homologous models as a free lunch", arXiv:2311.03099).

  τ̃ᵢ = mᵢ ⊙ τᵢ / (1 − p),  mᵢ ~ Bernoulli(1 − p) elementwise
  dare_linear: θ = θ₀ + λ Σᵢ wᵢ τ̃ᵢ   (then task arithmetic)

Randomness: expert i's mask comes from fold_in(key, i), where `key` is derived
from (seed, parameter name); with JAX's partitionable threefry the mask is the
same on 1 device, 8 devices or several hosts.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmerge.methods._inputs import (
    as_float32,
    check_key,
    check_range,
    check_tensors,
    weights_vector,
)


def check_drop_rate(method: str, drop_rate) -> None:
    check_range(method, "drop_rate", drop_rate, 0.0, 1.0, high_open=True)


def dare_drop(task_vector: jax.Array, key: jax.Array, drop_rate) -> jax.Array:
    """m ⊙ τ / (1 − p) with m ~ Bernoulli(1 − p): drops each entry with probability p."""
    keep = jax.random.bernoulli(key, 1.0 - drop_rate, task_vector.shape)
    return jnp.where(keep, task_vector / (1.0 - drop_rate), 0.0)


def dare_task_vectors(
    experts: Sequence[jax.Array], *, base: jax.Array, key: jax.Array, drop_rate=0.9
) -> list[jax.Array]:
    """DARE's dropped and rescaled task vectors of one tensor, τ̂ᵢ = mᵢ ⊙ τᵢ / (1 − p),
    expert i's mask from fold_in(key, i) (as `dare_linear`, which sums them)."""
    check_tensors("dare_task_vectors", experts, base, needs_base=True)
    check_drop_rate("dare_task_vectors", drop_rate)
    check_key("dare_task_vectors", key)
    b = as_float32(base)
    return [
        dare_drop(as_float32(e) - b, jax.random.fold_in(key, i), drop_rate)
        for i, e in enumerate(experts)
    ]


def dare_linear(
    experts: Sequence[jax.Array],
    *,
    base: jax.Array,
    key: jax.Array,
    weights=None,
    drop_rate=0.9,
    lam=1.0,
) -> jax.Array:
    """DARE then task arithmetic: θ = θ₀ + λ Σᵢ wᵢ mᵢ ⊙ τᵢ / (1 − p).

    Args:
      experts: K arrays shaped like `base`.
      base: θ₀.
      key: a PRNG key for this parameter.
      weights: float[K] or None (all ones).
      drop_rate: p ∈ [0, 1).
      lam: λ.
    Returns:
      float32 array of the base's shape.
    """
    check_tensors("dare_linear", experts, base, needs_base=True)
    check_drop_rate("dare_linear", drop_rate)
    check_key("dare_linear", key)
    w = weights_vector("dare_linear", weights, len(experts))
    b = as_float32(base)
    return b + lam * sum(
        w[i] * dare_drop(as_float32(e) - b, jax.random.fold_in(key, i), drop_rate)
        for i, e in enumerate(experts)
    )
