"""Linear merges: weighted averaging and task arithmetic.

θ₀ base, θᵢ expert i, τᵢ = θᵢ − θ₀ its task vector, wᵢ its weight.
"""

from collections.abc import Sequence

import jax

from jaxmerge.methods._inputs import as_float32, check_tensors, weights_vector


def average(
    experts: Sequence[jax.Array], *, base: jax.Array | None = None, weights=None
) -> jax.Array:
    """Weighted parameter average (Wortsman et al. 2022, "Model soups", arXiv:2203.05482).

        θ = Σᵢ wᵢ θᵢ / Σᵢ wᵢ

    computed as θ₁ + Σᵢ wᵢ (θᵢ − θ₁) / Σᵢ wᵢ, the same value with the large common
    part taken out, so identical experts return themselves bit for bit.

    Args:
      experts: K arrays of one shape, any float dtype.
      base: unused (accepted so every method takes the same keywords).
      weights: float[K] or None (all ones). Σ wᵢ must not be 0.
    Returns:
      float32 array of the experts' shape.
    """
    check_tensors("average", experts, None, needs_base=False)
    w = weights_vector("average", weights, len(experts))
    first = as_float32(experts[0])
    total = sum(w[i] * (as_float32(e) - first) for i, e in enumerate(experts[1:], start=1))
    return first + total / w.sum()


def task_arithmetic(
    experts: Sequence[jax.Array], *, base: jax.Array, weights=None, lam=1.0
) -> jax.Array:
    """Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic", 2212.04089).

        θ = θ₀ + λ Σᵢ wᵢ τᵢ,   τᵢ = θᵢ − θ₀

    The sum is unrolled over the K experts (no stacking copy; XLA fuses it into
    one pass over the inputs).

    Args:
      experts: K arrays shaped like `base`.
      base: θ₀.
      weights: float[K] or None (all ones).
      lam: λ, the scale of the summed task vector.
    Returns:
      float32 array of the base's shape.
    """
    check_tensors("task_arithmetic", experts, base, needs_base=True)
    w = weights_vector("task_arithmetic", weights, len(experts))
    b = as_float32(base)
    return b + lam * sum(w[i] * (as_float32(e) - b) for i, e in enumerate(experts))
