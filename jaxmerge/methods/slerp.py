"""Spherical linear interpolation between two models (Shoemake 1985,
"Animating rotation with quaternion curves"; used for merging LLMs since
"Model soups"-era community work and in mergekit).

Per tensor, between a = θ₁ and b = θ₂ with interpolation factor t ∈ [0, 1]:

  cos Ω = ⟨a, b⟩ / (‖a‖ ‖b‖)
  θ = sin((1 − t) Ω) / sin Ω · a + sin(t Ω) / sin Ω · b
  θ = a + t (b − a) when the tensors are (anti)parallel within 1e-6 or zero

The angle comes from the directions; the unnormalised tensors are
interpolated, so t = 0 and t = 1 return the endpoints. No base model.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmerge.errors import InputError
from jaxmerge.methods._inputs import as_float32, check_range, check_tensors

COLLINEAR_TOLERANCE = 1e-6


def slerp(
    experts: Sequence[jax.Array], *, base: jax.Array | None = None, weights=None, t=0.5
) -> jax.Array:
    """Slerp of one tensor between experts[0] (t = 0) and experts[1] (t = 1).

    Args:
      experts: exactly 2 arrays of one shape.
      base: unused.
      weights: must be None; slerp's one knob is t.
      t: interpolation factor in [0, 1].
    Returns:
      float32 array of the experts' shape.
    """
    check_tensors("slerp", experts, None, needs_base=False, min_experts=2, max_experts=2)
    check_range("slerp", "t", t, 0.0, 1.0)
    if weights is not None:
        raise InputError("slerp: takes no per-expert weights; set t (0 = first, 1 = second)")
    a, b = as_float32(experts[0]), as_float32(experts[1])
    norm_a, norm_b = jnp.sqrt(jnp.sum(a * a)), jnp.sqrt(jnp.sum(b * b))
    safe = (norm_a > 0) & (norm_b > 0)
    cos = jnp.sum(a * b) / jnp.where(safe, norm_a * norm_b, 1.0)
    cos = jnp.clip(cos, -1.0, 1.0)
    linear = ~safe | (jnp.abs(cos) > 1.0 - COLLINEAR_TOLERANCE)
    omega = jnp.arccos(jnp.where(linear, 0.5, cos))  # any safe angle on the linear branch
    sin_omega = jnp.sin(omega)
    coeff_a = jnp.sin((1.0 - t) * omega) / sin_omega
    coeff_b = jnp.sin(t * omega) / sin_omega
    spherical = coeff_a * a + coeff_b * b
    return jnp.where(linear, a + t * (b - a), spherical)
