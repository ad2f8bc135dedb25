"""Model Breadcrumbs (Davari & Belilovsky 2023, "Model breadcrumbs: scaling
multi-task model merging with sparse masks", arXiv:2312.06795).

Each task vector loses its largest-magnitude outliers and its smallest
entries, per tensor (the paper masks layer by layer), then task arithmetic:

  n = entries in the tensor, k_top = ⌊γ · n⌋, k_keep = ⌈density · n⌉
  (k_top shrinks to n − k_keep if the two overlap, so density always holds)
  u = k_top-th largest |τᵢ| (+∞ when k_top = 0), l = (k_top + k_keep)-th largest
  τ̂ᵢ = τᵢ · [l ≤ |τᵢ| < u]
  θ = θ₀ + λ Σᵢ wᵢ τ̂ᵢ

Ties at l are kept and ties at u removed, so with repeated magnitudes slightly
more or fewer than k_keep entries survive.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmerge.methods import select
from jaxmerge.methods._inputs import as_float32, check_range, check_tensors, weights_vector


def breadcrumbs_mask(task_vector: jax.Array, density, gamma) -> jax.Array:
    """[l ≤ |τ| < u]: drops the ⌊γn⌋ largest magnitudes and all but the next ⌈density·n⌉."""
    n = task_vector.size
    k_keep = select.count_for_fraction(density, n)
    k_top = min(int(gamma * n), n - k_keep)
    upper = select.kth_largest_magnitude(task_vector, k_top)
    lower = select.kth_largest_magnitude(task_vector, k_top + k_keep)
    magnitude = jnp.abs(task_vector)
    return (magnitude >= lower) & (magnitude < upper)


def breadcrumbs(
    experts: Sequence[jax.Array],
    *,
    base: jax.Array,
    weights=None,
    density=0.9,
    gamma=0.01,
    lam=1.0,
) -> jax.Array:
    """Model Breadcrumbs of one tensor (equations in the module docstring).

    Args:
      experts: K arrays shaped like `base`.
      base: θ₀.
      weights: float[K] or None (all ones).
      density: fraction of entries kept, in [0, 1].
      gamma: fraction of largest-magnitude entries removed as outliers, in [0, 1].
      lam: λ.
    Returns:
      float32 array of the base's shape.
    """
    check_tensors("breadcrumbs", experts, base, needs_base=True)
    check_range("breadcrumbs", "density", density, 0.0, 1.0)
    check_range("breadcrumbs", "gamma", gamma, 0.0, 1.0)
    w = weights_vector("breadcrumbs", weights, len(experts))
    b = as_float32(base)
    total = 0.0
    for i, e in enumerate(experts):
        t = as_float32(e) - b
        total = total + w[i] * jnp.where(breadcrumbs_mask(t, density, gamma), t, 0.0)
    return b + lam * total
