"""The plan: every input agrees (names, shapes, dtypes) before any weight is read, and
the parameters are grouped into reads that fit the memory budget."""

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from jaxmerge import checkpoints
from jaxmerge.errors import InputError
from jaxmerge.merging.config import DTYPES, MergeConfig
from jaxmerge.methods import get_method

# Groups of parameters only amortise per-call overhead; past a few hundred MB they
# buy no speed, only memory. The default budget is this, or less (default_budget).
DEFAULT_BUDGET = 2 * 2**30


@dataclasses.dataclass
class Plan:
    """What will be merged: checked before any parameter is read."""

    names: list[str]  # in the base's (or first expert's) order
    params: dict[str, checkpoints.ParamInfo]  # of the output
    step: int
    output_format: str
    reference: pathlib.Path  # where config.json / tokenizer files come from (safetensors)


def default_budget(devices) -> int:
    """DEFAULT_BUDGET, or half the free host memory, or half a device's free memory: the least.

    Arrays live on the devices (host memory on CPU, where memory_stats is None) and reads
    pass through the host, so both bound a merge.
    """
    limits = [DEFAULT_BUDGET, checkpoints.free_memory() // 2]
    for device in devices:
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            limits.append((stats["bytes_limit"] - stats.get("bytes_in_use", 0)) // 2)
    return max(1, min(limits))


def make_plan(config: MergeConfig, base, experts: Sequence) -> Plan:
    """Checks that every input has the same parameters, shapes and dtypes."""
    spec = get_method(config.method)
    models = ([("base", base)] if base is not None else []) + [
        (f"expert {i}", e) for i, e in enumerate(experts)
    ]
    ref_label, ref = models[0]
    for label, reader in models[1:]:
        missing = [n for n in ref.params if n not in reader.params]
        extra = [n for n in reader.params if n not in ref.params]
        if missing or extra:
            detail = f"lacks {missing[0]!r}" if missing else f"has extra parameter {extra[0]!r}"
            more = len(missing) + len(extra) - 1
            also = f" (and {more} more differences)" if more else ""
            raise InputError(
                f"{reader.path}: {label} {detail}{also} compared with {ref_label} {ref.path}"
            )
        for name, info in ref.params.items():
            other = reader.params[name]
            if tuple(other.shape) != tuple(info.shape):
                raise InputError(
                    f"{reader.path}: parameter {name!r} has shape {tuple(other.shape)} but "
                    f"{tuple(info.shape)} in {ref_label} {ref.path}"
                )
            if np.dtype(other.dtype) != np.dtype(info.dtype):
                raise InputError(
                    f"{reader.path}: parameter {name!r} is {np.dtype(other.dtype).name} but "
                    f"{np.dtype(info.dtype).name} in {ref_label} {ref.path} (dtype mix; convert "
                    "the inputs to one dtype first)"
                )
    if spec.needs_base and base is None:
        raise InputError(f"--base: {config.method} needs a base model (task vectors are θᵢ − θ₀)")
    out_dtype = DTYPES[config.dtype] if config.dtype else None
    params = {
        n: checkpoints.ParamInfo(tuple(i.shape), np.dtype(out_dtype or i.dtype))
        for n, i in ref.params.items()
    }
    output_format = config.output_format or ref.format
    if output_format not in checkpoints.FORMATS:
        raise InputError(
            f"--output_format={output_format!r}: choose from {', '.join(checkpoints.FORMATS)}"
        )
    return Plan(list(ref.params), params, int(ref.step or 0), output_format, ref.path)


def group_by_bytes(names: Sequence[str], sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Consecutive groups whose sizes add up to at most `limit` (a larger one stands alone)."""
    groups, current, total = [], [], 0
    for name in names:
        if current and total + sizes[name] > limit:
            groups.append(current)
            current, total = [], 0
        current.append(name)
        total += sizes[name]
    if current:
        groups.append(current)
    return groups
