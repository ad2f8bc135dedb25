"""Model Stock (Jang et al. 2024, "Model Stock: all we need is just a few
fine-tuned models", arXiv:2403.19522).

Per tensor (the paper works layer by layer), with K ≥ 2 experts:

  cos φ = mean over pairs i < j of cos(τᵢ, τⱼ),  τᵢ = θᵢ − θ₀
  t = K cos φ / (1 + (K − 1) cos φ)
  θ = t · θ̄ + (1 − t) · θ₀ = θ₀ + t (θ̄ − θ₀),  θ̄ = Σ wᵢθᵢ / Σ wᵢ

Weights other than 1 only weight the average θ̄ (the paper has none). A zero
task vector has no direction; its cosines count as 0, so identical experts
return the base.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmerge.methods._inputs import as_float32, check_tensors, weights_vector


def interpolation_ratio(task_vectors: Sequence[jax.Array]) -> jax.Array:
    """t = K cos φ / (1 + (K − 1) cos φ), cos φ the mean pairwise cosine of the task vectors."""
    count = len(task_vectors)
    norms = [jnp.sqrt(jnp.sum(t * t)) for t in task_vectors]
    cosines = []
    for i in range(count):
        for j in range(i + 1, count):
            denominator = norms[i] * norms[j]
            dot = jnp.sum(task_vectors[i] * task_vectors[j])
            cosines.append(
                jnp.where(denominator > 0, dot / jnp.where(denominator > 0, denominator, 1.0), 0.0)
            )
    cos = sum(cosines) / len(cosines)
    return count * cos / (1.0 + (count - 1) * cos)


def model_stock(experts: Sequence[jax.Array], *, base: jax.Array, weights=None) -> jax.Array:
    """Model Stock of one tensor (equations in the module docstring).

    Args:
      experts: K ≥ 2 arrays shaped like `base`.
      base: θ₀.
      weights: float[K] or None (all ones); weight the average θ̄ only.
    Returns:
      float32 array of the base's shape.
    """
    check_tensors("model_stock", experts, base, needs_base=True, min_experts=2)
    w = weights_vector("model_stock", weights, len(experts))
    b = as_float32(base)
    task_vectors = [as_float32(e) - b for e in experts]
    mean_task_vector = sum(w[i] * t for i, t in enumerate(task_vectors)) / w.sum()
    return b + interpolation_ratio(task_vectors) * mean_task_vector
