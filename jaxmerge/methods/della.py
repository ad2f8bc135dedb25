"""DELLA-Merging (Deep et al. 2024, "DELLA-Merging: reducing interference in
model merging through magnitude-based sampling", arXiv:2406.11617).

Drop (MagPrune), ELect, fuse (disjoint mean), as TIES but with a random drop
whose keep probability grows with magnitude rank:

  within each row r of τᵢ (the last axis; a 1-D tensor is one row), rank the
  magnitudes ascending, ρ ∈ [0, 1] the rank scaled to the row (ρ = ½ for a row
  of one entry);
  keep probability   qᵢ = density − ε + 2ε · ρ   (mean: density)
  τ̂ᵢ = wᵢ · mᵢ ⊙ τᵢ / qᵢ,  mᵢ ~ Bernoulli(qᵢ)   (rescaled so E[τ̂ᵢ] = wᵢτᵢ)
  θ = θ₀ + λ · disjoint_mean(τ̂, elect_sign(τ̂))   (see ties.py)

ε must keep every qᵢ in (0, 1]: 0 < density − ε and density + ε ≤ 1. Expert i's
mask is drawn from fold_in(key, i). Ranking costs a sort per row: DELLA is the
slowest method here by design.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmerge.errors import InputError
from jaxmerge.methods._inputs import (
    as_float32,
    check_key,
    check_range,
    check_tensors,
    weights_vector,
)
from jaxmerge.methods.ties import disjoint_mean, elect_sign


def keep_probability(task_vector: jax.Array, density, epsilon) -> jax.Array:
    """qᵢ = density − ε + 2ε · (ascending magnitude rank within the row, scaled to [0, 1])."""
    rows = task_vector.reshape(-1, task_vector.shape[-1] if task_vector.ndim else 1)
    width = rows.shape[-1]
    rank = jnp.argsort(jnp.argsort(jnp.abs(rows), axis=-1, stable=True), axis=-1, stable=True)
    scaled = rank.astype(jnp.float32) / (width - 1) if width > 1 else jnp.full(rows.shape, 0.5)
    return (density - epsilon + 2.0 * epsilon * scaled).reshape(task_vector.shape)


def della(
    experts: Sequence[jax.Array],
    *,
    base: jax.Array,
    key: jax.Array,
    weights=None,
    density=0.5,
    epsilon=0.1,
    lam=1.0,
) -> jax.Array:
    """DELLA-Merging of one tensor (equations in the module docstring).

    Args:
      experts: K arrays shaped like `base`.
      base: θ₀.
      key: a PRNG key for this parameter.
      weights: float[K] or None (all ones).
      density: mean keep probability, in (0, 1].
      epsilon: spread of keep probabilities across magnitude ranks, ≥ 0.
      lam: λ.
    Returns:
      float32 array of the base's shape.
    """
    check_tensors("della", experts, base, needs_base=True)
    check_range("della", "density", density, 0.0, 1.0, low_open=True)
    check_range("della", "epsilon", epsilon, 0.0, 1.0)
    if isinstance(density, float | int) and isinstance(epsilon, float | int):
        if not (density - epsilon > 0 and density + epsilon <= 1):
            raise InputError(
                f"della: density={density} and epsilon={epsilon} give keep probabilities "
                "outside (0, 1]; need 0 < density − epsilon and density + epsilon ≤ 1"
            )
    check_key("della", key)
    w = weights_vector("della", weights, len(experts))
    b = as_float32(base)
    pruned = []
    for i, e in enumerate(experts):
        t = as_float32(e) - b
        q = keep_probability(t, density, epsilon)
        keep = jax.random.uniform(jax.random.fold_in(key, i), t.shape) < q
        pruned.append(w[i] * jnp.where(keep, t / q, 0.0))
    return b + lam * disjoint_mean(pruned, elect_sign(pruned))
