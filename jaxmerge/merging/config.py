"""One merge's settings: `MergeConfig`, and the choices its flags offer (CHOICES).

The command line reads its choices and help from here, never the other way round.
"""

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp

from jaxmerge import checkpoints
from jaxmerge.errors import InputError
from jaxmerge.methods import get_method
from jaxmerge.methods.tree import TRIMS

HPARAMS = ("lam", "density", "drop_rate", "trim", "gamma", "epsilon", "t")


DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}

# What each choice-valued field of MergeConfig may be; `jaxmerge merge` offers these.
CHOICES = {
    "trim": TRIMS,
    "input_format": checkpoints.FORMATS,
    "output_format": checkpoints.FORMATS,
    "dtype": tuple(DTYPES),
}


@dataclasses.dataclass(frozen=True)
class MergeConfig:
    """One merge, as `jaxmerge merge` flags or gin bindings (`merge.MergeConfig.<field>`).

    Gin files import this class through the `jaxmerge.merge` alias (its gin name since
    before the engine was a package), so the bindings keep their names.

    Hyperparameters left None take the method's paper defaults; setting one the
    method does not take is an error.
    """

    method: str
    experts: Sequence[str]
    output: str
    base: str | None = None
    weights: Sequence[float] | None = None
    # Per-parameter weights, e.g. learned per layer (jaxmerge.learning): (regex, weights)
    # rules, the first whose regex fully matches a parameter's name wins; parameters no
    # rule matches take `weights`. Gin or Python only (no flag).
    weight_rules: Sequence[tuple[str, Sequence[float]]] | None = None
    lam: float | None = None
    density: float | None = None
    drop_rate: float | None = None
    trim: str | None = None
    gamma: float | None = None
    epsilon: float | None = None
    t: float | None = None
    seed: int = 0
    input_format: str | None = None
    output_format: str | None = None
    dtype: str | None = None
    memory_budget: int | None = None  # bytes; None: default_budget()
    overwrite: bool = False
    max_shard_bytes: int = 5 * 10**9
    allow_nonfinite: bool = False  # merge NaN/Inf inputs as they are instead of refusing
    allow_unrelated: bool = False  # skip the checks that experts were fine-tuned from the base

    def hparams(self) -> dict:
        """The hyperparameters set, checked against what the method takes."""
        spec = get_method(self.method)
        chosen = {h: getattr(self, h) for h in HPARAMS if getattr(self, h) is not None}
        unknown = sorted(set(chosen) - set(spec.hparams))
        if unknown:
            takes = ", ".join(f"--{h}" for h in spec.hparams) or "no hyperparameters"
            raise InputError(
                f"{', '.join('--' + u for u in unknown)} does not apply to {self.method}"
                f" (it takes {takes})"
            )
        if "trim" in chosen and chosen["trim"] not in TRIMS:
            raise InputError(f"--trim={chosen['trim']!r}: choose from {', '.join(TRIMS)}")
        return chosen


def parse_bytes(text: str) -> int:
    """'4GB' → 4·10⁹, '512MiB' → 512·2²⁰, '1000' → 1000."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    given, text = text, text.strip().upper()
    number = text.rstrip("KMGTIB")
    try:
        return int(float(number) * units[text[len(number) :]])
    except (ValueError, KeyError):
        raise InputError(
            f"--memory_budget={given!r}: expected a size such as 4GB or 512MiB"
        ) from None
