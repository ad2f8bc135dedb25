"""Non-finite values: refused in the inputs (unless allowed), never written by a merge.

The check rides on the streaming merge, with no pass of its own over the files: for each
parameter one jitted reduction over the arrays already read (does each hold a NaN, an
Inf?) is dispatched before the merge kernel takes them, one over the merged result after,
and both answers come back to the host together, just before the write that would wait
for the merged values anyway.
"""

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge.errors import InputError


@jax.jit
def nonfinite_kinds(arrays: Sequence[jax.Array]) -> jax.Array:
    """bool[len(arrays), 2]: whether each array holds a NaN, and whether it holds an Inf."""
    rows = []
    for a in arrays:
        if jnp.issubdtype(a.dtype, jnp.inexact):
            rows.append(jnp.stack([jnp.isnan(a).any(), jnp.isinf(a).any()]))
        else:
            rows.append(jnp.zeros((2,), bool))
    return jnp.stack(rows)


def _describe(kinds: np.ndarray) -> str:
    return " and ".join(k for k, present in zip(("NaN", "Inf"), kinds, strict=True) if present)


class NonFiniteGuard:
    """Per parameter: refuses non-finite inputs unless allowed; refuses a non-finite result
    of finite inputs (e.g. float16 overflow on the cast back), naming the parameter."""

    def __init__(self, inputs: Sequence[tuple[str, pathlib.Path]], output, *, allow_inputs: bool):
        self.inputs = list(inputs)  # (label, path) in the order of the arrays checked
        self.output = output
        self.allow_inputs = allow_inputs

    def inspect(self, arrays: Sequence[jax.Array]) -> jax.Array:
        """Dispatches the reduction over a parameter's inputs (before they are donated)."""
        return nonfinite_kinds(list(arrays))

    def check(self, name: str, input_kinds: jax.Array, merged: jax.Array) -> None:
        """Waits for both reductions; InputError naming the file and the parameter."""
        inputs, result = jax.device_get((input_kinds, nonfinite_kinds([merged])))
        bad = [i for i, row in enumerate(inputs) if row.any()]
        if bad and not self.allow_inputs:
            label, path = self.inputs[bad[0]]
            more = f" (as do {len(bad) - 1} other input(s))" if len(bad) > 1 else ""
            raise InputError(
                f"{path}: parameter {name!r} of the {label} holds {_describe(inputs[bad[0]])}"
                f"{more}; pass --allow_nonfinite to merge non-finite values as they are"
            )
        if result[0].any() and not bad:
            raise InputError(
                f"{self.output}: merged parameter {name!r} is {_describe(result[0])} though "
                f"every input is finite ({np.dtype(merged.dtype).name} overflow? lower --lam "
                "or --weights, or write --dtype float32); the output was not finalized"
            )
