"""Non-finite values: refused in the inputs (unless allowed), never written by a merge.

The check rides on the streaming merge, with no pass of its own over the files: each
input is checked by the thread that read it, while the merge kernel of the previous
parameter runs, and each merged parameter by the thread that writes it, before it is
written. A float is NaN or ±Inf exactly when its exponent bits are all ones, so on the
host the check is a bitwise AND and a max over blocks that stay in cache (about 0.3 ns
an element, a quarter of the merge kernel's cost for task arithmetic); XLA:CPU's own
reductions (`isnan(x).any()`) cost several times the merge itself. Arrays on
accelerators are checked there, with a jitted reduction. Which of NaN or Inf it was is
worked out only once something is found, for the message.
"""

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge.errors import InputError

# (unsigned view, exponent mask) by float size: the exponent is all ones for NaN and ±Inf.
_EXPONENT = {2: (np.uint16, 0x7F80), 4: (np.uint32, 0x7F800000), 8: (np.uint64, 0x7FF << 52)}
_FLOAT16_EXPONENT = 0x7C00
_BLOCK = 1 << 18  # elements per step: the masked temporary stays in cache


def _host_nonfinite(data: np.ndarray) -> bool:
    """Whether a host array of floats holds a NaN or an Inf (any float dtype, bfloat16 too)."""
    if data.dtype == np.float16:
        view, mask = np.uint16, _FLOAT16_EXPONENT
    elif data.dtype in (np.float32, np.float64) or data.dtype.name == "bfloat16":
        view, mask = _EXPONENT[data.dtype.itemsize]
    else:  # float8 and other rarities: no fast path
        return not np.isfinite(data.astype(np.float32)).all()
    bits = np.ascontiguousarray(data).reshape(-1).view(view)
    scratch = np.empty(min(_BLOCK, bits.size), view)
    for start in range(0, bits.size, _BLOCK):
        block = scratch[: min(_BLOCK, bits.size - start)]
        np.bitwise_and(bits[start : start + _BLOCK], mask, out=block)
        if block.max() == mask:
            return True
    return False


@jax.jit
def _device_nonfinite(array: jax.Array) -> jax.Array:
    return ~jnp.isfinite(array).all()


def has_nonfinite(array) -> bool:
    """Whether a float array (numpy, or jax on any devices) holds a NaN or an Inf."""
    if not jnp.issubdtype(array.dtype, jnp.inexact) or array.size == 0:
        return False
    if isinstance(array, np.ndarray):
        return _host_nonfinite(array)
    if all(d.platform == "cpu" for d in array.sharding.device_set):
        return any(
            _host_nonfinite(np.asarray(shard.data))  # aliases the CPU buffer: no copy
            for shard in array.addressable_shards
            if shard.replica_id == 0
        )
    return bool(_device_nonfinite(array))


def describe(array) -> str:
    """'NaN', 'Inf' or 'NaN and Inf': what an array with non-finite values holds."""
    values = jnp.asarray(array)
    kinds = [k for k, f in (("NaN", jnp.isnan), ("Inf", jnp.isinf)) if bool(f(values).any())]
    return " and ".join(kinds)


class NonFiniteGuard:
    """Per parameter: refuses non-finite inputs unless allowed; refuses a non-finite result
    of finite inputs (e.g. float16 overflow on the cast back), naming the parameter."""

    def __init__(self, inputs: Sequence[tuple[str, pathlib.Path]], output, *, allow_inputs: bool):
        self.inputs = list(inputs)  # (label, path) in the order of the arrays checked
        self.output = output
        self.allow_inputs = allow_inputs
        self.nonfinite_inputs: set[str] = set()  # parameters let through by allow_inputs

    def check_input(self, name: str, which: int, array) -> None:
        """InputError naming the file and the parameter if input `which` is not finite."""
        if not has_nonfinite(array):
            return
        if self.allow_inputs:
            self.nonfinite_inputs.add(name)
            return
        label, path = self.inputs[which]
        raise InputError(
            f"{path}: parameter {name!r} of the {label} holds {describe(array)}; "
            "pass --allow_nonfinite to merge non-finite values as they are"
        )

    def check_result(self, name: str, merged) -> None:
        """InputError naming the output and the parameter if finite inputs merged to NaN/Inf."""
        if name in self.nonfinite_inputs or not has_nonfinite(merged):
            return
        raise InputError(
            f"{self.output}: merged parameter {name!r} is {describe(merged)} though "
            f"every input is finite ({np.dtype(merged.dtype).name} overflow? lower --lam "
            "or --weights, or write --dtype float32); the output was not finalized"
        )
