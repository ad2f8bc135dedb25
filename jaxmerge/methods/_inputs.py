"""Checks and conversions every method applies to its inputs.

Hyperparameter checks run only on concrete Python numbers: under `jax.grad` a
learned λ is a tracer, and its range is the optimiser's business.
"""

import math
from collections.abc import Sequence
from numbers import Real
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmerge.errors import InputError


def check_tensors(
    method: str,
    experts: Sequence[jax.Array],
    base: jax.Array | None,
    *,
    needs_base: bool,
    min_experts: int = 1,
    max_experts: int | None = None,
) -> None:
    """Raises InputError unless there are enough experts, shaped like each other and the base."""
    if isinstance(experts, jax.Array):
        raise InputError(
            f"{method}: experts must be a sequence of arrays, one per expert, not one array "
            f"of shape {experts.shape} (stacking copies them; pass a list)"
        )
    count = len(experts)
    if count < min_experts or (max_experts is not None and count > max_experts):
        wanted = (
            f"exactly {min_experts}"
            if min_experts == max_experts
            else f"at least {min_experts}"
            if max_experts is None
            else f"{min_experts} to {max_experts}"
        )
        raise InputError(f"{method}: needs {wanted} expert(s), got {count}")
    if needs_base and base is None:
        raise InputError(f"{method}: needs a base model (task vectors are expert − base)")
    shapes = [tuple(e.shape) for e in experts]
    if base is not None:
        shapes.append(tuple(base.shape))
    if len(set(shapes)) > 1:
        named = [f"expert {i}: {s}" for i, s in enumerate(shapes[: len(experts)])]
        if base is not None:
            named.append(f"base: {shapes[-1]}")
        raise InputError(f"{method}: shapes differ ({', '.join(named)})")


def weights_vector(method: str, weights, num_experts: int) -> jax.Array:
    """Per-expert weights as float32[num_experts]; None means all ones."""
    if weights is None:
        return jnp.ones((num_experts,), jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (num_experts,):
        raise InputError(
            f"{method}: weights has shape {tuple(w.shape)}, expected ({num_experts},): "
            "one weight per expert"
        )
    return w


def check_range(
    method: str, name: str, value, low: float, high: float, *, low_open=False, high_open=False
) -> None:
    """Raises InputError if a concrete hyperparameter lies outside its interval."""
    if not isinstance(value, Real):
        return
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high or value != value:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise InputError(f"{method}: {name}={value} is outside {interval}")


class Interval(NamedTuple):
    """The values a hyperparameter may take: from low to high, each end open or closed."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if not isinstance(value, Real) or isinstance(value, bool) or math.isnan(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        """'in (0, 1]', or 'to be finite' for the whole real line."""
        if math.isinf(self.low) and math.isinf(self.high):
            return "to be finite"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


FINITE = Interval(-math.inf, math.inf, low_open=True, high_open=True)
FRACTION = Interval(0.0, 1.0)  # [0, 1]
DENSITY = Interval(0.0, 1.0, low_open=True)  # (0, 1]: a density of 0 keeps nothing
PROBABILITY_BELOW_ONE = Interval(0.0, 1.0, high_open=True)  # [0, 1): DARE divides by 1 − p


def check_key(method: str, key) -> None:
    if key is None:
        raise InputError(
            f"{method}: is random and needs a key (merge_trees derives one per parameter "
            "from the seed and the parameter name)"
        )


def as_float32(x: jax.Array) -> jax.Array:
    """All arithmetic happens in float32 whatever the storage dtype."""
    return x.astype(jnp.float32)
