"""TIES-Merging (Yadav et al. 2023, "TIES-Merging: Resolving interference when
merging models", arXiv:2306.01708) and DARE-TIES (Yu et al. 2024, arXiv:2311.03099).

θ₀ base, θᵢ expert i, τᵢ = θᵢ − θ₀, wᵢ weight, λ = `lam`:

  trim          τ̂ᵢ = wᵢ · τᵢ · [|τᵢ| ≥ tᵢ],  tᵢ the k-th largest |τᵢ|, k = ⌈density · n⌉
  elect         γ = sign(Σᵢ τ̂ᵢ), with γ = +1 where the sum is 0
  disjoint mean τₘ = Σᵢ [τ̂ᵢ ≠ 0 ∧ sign τ̂ᵢ = γ] τ̂ᵢ / max(1, #agreeing experts)
  result        θ = θ₀ + λ τₘ

n counts all parameters of expert i (the original code's global trim, our
default: `merge_trees` / the merge engine pass `thresholds`) or one tensor's
(`trim="tensor"`, or whenever `thresholds` is None). Entries tied with tᵢ are
all kept. DARE-TIES replaces the trim by DARE's random drop and rescale.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmerge.methods import select
from jaxmerge.methods._inputs import (
    as_float32,
    check_key,
    check_range,
    check_tensors,
    weights_vector,
)
from jaxmerge.methods.dare import check_drop_rate, dare_drop


def trim(task_vector: jax.Array, threshold: jax.Array) -> jax.Array:
    """τ · [|τ| ≥ t]: keeps the entries at least as large as the threshold."""
    return jnp.where(jnp.abs(task_vector) >= threshold, task_vector, 0.0)


def elect_sign(task_vectors: Sequence[jax.Array]) -> jax.Array:
    """γ = sign(Σᵢ τ̂ᵢ) ∈ {−1, +1}, +1 where the sum is exactly 0."""
    return jnp.where(sum(task_vectors) >= 0, 1.0, -1.0)


def disjoint_mean(task_vectors: Sequence[jax.Array], sign: jax.Array) -> jax.Array:
    """τₘ = Σᵢ [τ̂ᵢ agrees with γ] τ̂ᵢ / max(1, count); zeros never agree."""
    agree = [t * sign > 0 for t in task_vectors]
    total = sum(jnp.where(a, t, 0.0) for a, t in zip(agree, task_vectors, strict=True))
    count = sum(a.astype(jnp.float32) for a in agree)
    return total / jnp.maximum(count, 1.0)


def ties_task_vectors(
    experts: Sequence[jax.Array], *, base: jax.Array, density=0.2, thresholds=None
) -> list[jax.Array]:
    """TIES's trim and elect without the mean, one tensor: the task vectors AdaMerging++
    (Yang et al. 2024, arXiv:2310.02575, §3.3) learns coefficients over,

        τ̃ᵢ = [τ̂ᵢ agrees with γ] τ̂ᵢ,  τ̂ᵢ = τᵢ · [|τᵢ| ≥ tᵢ],  γ = sign(Σᵢ τ̂ᵢ)

    so that Σᵢ τ̃ᵢ / max(1, #agreeing) is TIES's τₘ. `thresholds` as in `ties`.
    """
    check_tensors("ties_task_vectors", experts, base, needs_base=True)
    check_range("ties_task_vectors", "density", density, 0.0, 1.0)
    b = as_float32(base)
    task_vectors = [as_float32(e) - b for e in experts]
    if thresholds is None:
        k = select.count_for_fraction(density, b.size)
        thresholds = [select.kth_largest_magnitude(t, k) for t in task_vectors]
    trimmed = [trim(t, thresholds[i]) for i, t in enumerate(task_vectors)]
    sign = elect_sign(trimmed)
    return [jnp.where(t * sign > 0, t, 0.0) for t in trimmed]


def ties(
    experts: Sequence[jax.Array],
    *,
    base: jax.Array,
    weights=None,
    density=0.2,
    lam=1.0,
    thresholds=None,
) -> jax.Array:
    """TIES-Merging of one tensor (equations in the module docstring).

    Args:
      experts: K arrays shaped like `base`.
      base: θ₀.
      weights: float[K] or None (all ones); scale each trimmed task vector.
      density: fraction of entries of each task vector kept by the trim, in [0, 1].
      lam: λ.
      thresholds: float[K], expert i's magnitude threshold tᵢ computed over the
        whole model (global trim). None: computed over this tensor.
    Returns:
      float32 array of the base's shape.
    """
    check_tensors("ties", experts, base, needs_base=True)
    check_range("ties", "density", density, 0.0, 1.0)
    w = weights_vector("ties", weights, len(experts))
    b = as_float32(base)
    task_vectors = [as_float32(e) - b for e in experts]
    if thresholds is None:
        k = select.count_for_fraction(density, b.size)
        thresholds = [select.kth_largest_magnitude(t, k) for t in task_vectors]
    trimmed = [w[i] * trim(t, thresholds[i]) for i, t in enumerate(task_vectors)]
    return b + lam * disjoint_mean(trimmed, elect_sign(trimmed))


def dare_ties(
    experts: Sequence[jax.Array],
    *,
    base: jax.Array,
    key: jax.Array,
    weights=None,
    drop_rate=0.9,
    lam=1.0,
) -> jax.Array:
    """DARE-TIES: DARE's drop-and-rescale replaces the TIES trim, then elect + disjoint mean.

        τ̂ᵢ = wᵢ · mᵢ ⊙ τᵢ / (1 − p),  mᵢ ~ Bernoulli(1 − p)
        θ = θ₀ + λ · disjoint_mean(τ̂, elect_sign(τ̂))

    No magnitude trim follows the drop. The mask of expert i is drawn from
    fold_in(key, i); `key` is derived from (seed, parameter name).

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
    check_tensors("dare_ties", experts, base, needs_base=True)
    check_drop_rate("dare_ties", drop_rate)
    check_key("dare_ties", key)
    w = weights_vector("dare_ties", weights, len(experts))
    b = as_float32(base)
    dropped = [
        w[i] * dare_drop(as_float32(e) - b, jax.random.fold_in(key, i), drop_rate)
        for i, e in enumerate(experts)
    ]
    return b + lam * disjoint_mean(dropped, elect_sign(dropped))
