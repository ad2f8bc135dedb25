"""Merge methods: pure math over arrays, one explicit registry.

Every method is a function of one tensor,

    merge_tensor(experts, *, base=None, weights=None, [key=...], **hparams) -> float32 array

with `experts` a sequence of K arrays (never stacked), `base` θ₀ as its own
keyword, `weights` float[K], and hyperparameters as plain keywords whose
defaults are the papers'. `merge_trees` lifts any of them to whole models
(pytrees); the merge engine calls `merge_tensor` chunk by chunk. Neither I/O,
nor sharding, nor gin lives here.

May import: jax, numpy, and jaxmerge.errors; nothing else of jaxmerge.
"""

from collections.abc import Callable, Mapping
from typing import NamedTuple

from jaxmerge.methods._inputs import (
    DENSITY,
    FINITE,
    FRACTION,
    PROBABILITY_BELOW_ONE,
    Interval,
)
from jaxmerge.methods.breadcrumbs import breadcrumbs
from jaxmerge.methods.dare import dare_linear
from jaxmerge.methods.della import della
from jaxmerge.methods.linear import average, task_arithmetic
from jaxmerge.methods.model_stock import model_stock
from jaxmerge.methods.slerp import slerp
from jaxmerge.methods.ties import dare_ties, ties


class MergeMethod(NamedTuple):
    """What the tree lift and the engine need to know to call a method."""

    merge_tensor: Callable
    hparams: tuple[str, ...]  # keyword hyperparameters besides weights (defaults: the signature)
    needs_base: bool = True
    random: bool = False  # takes `key`, derived from (seed, parameter name)
    global_trim: bool = False  # accepts `thresholds` from a whole-model trim (hparam `trim`)
    # Each output entry depends only on the same entry of the inputs (given the
    # whole-model thresholds, for global_trim), so a tensor may be merged in row blocks.
    elementwise: bool = False
    min_experts: int = 1
    max_experts: int | None = None
    # The values each numeric hyperparameter may take, checked (by the merge command,
    # before any file is opened) with an error naming the flag and the interval.
    ranges: Mapping[str, Interval] = {}


LAM = {"lam": FINITE}
METHODS: dict[str, MergeMethod] = {
    "average": MergeMethod(average, (), needs_base=False, elementwise=True),
    "task_arithmetic": MergeMethod(task_arithmetic, ("lam",), elementwise=True, ranges=LAM),
    "ties": MergeMethod(
        ties,
        ("density", "lam", "trim"),
        global_trim=True,
        elementwise=True,
        ranges={"density": DENSITY, **LAM},
    ),
    "dare_linear": MergeMethod(
        dare_linear,
        ("drop_rate", "lam"),
        random=True,
        ranges={"drop_rate": PROBABILITY_BELOW_ONE, **LAM},
    ),
    "dare_ties": MergeMethod(
        dare_ties,
        ("drop_rate", "lam"),
        random=True,
        ranges={"drop_rate": PROBABILITY_BELOW_ONE, **LAM},
    ),
    "breadcrumbs": MergeMethod(
        breadcrumbs,
        ("density", "gamma", "lam"),
        ranges={"density": DENSITY, "gamma": FRACTION, **LAM},
    ),
    "della": MergeMethod(
        della,
        ("density", "epsilon", "lam"),
        random=True,
        ranges={"density": DENSITY, "epsilon": FRACTION, **LAM},
    ),
    "model_stock": MergeMethod(model_stock, (), min_experts=2),
    "slerp": MergeMethod(
        slerp, ("t",), needs_base=False, min_experts=2, max_experts=2, ranges={"t": FRACTION}
    ),
}

from jaxmerge.methods.tree import (  # noqa: E402
    get_method,
    hparam_defaults,
    merge_trees,
    parameter_key,
)

__all__ = [
    "METHODS",
    "Interval",
    "MergeMethod",
    "get_method",
    "hparam_defaults",
    "merge_trees",
    "parameter_key",
]
