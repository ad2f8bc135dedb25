"""The jitted merge kernels of one merge, and where each parameter is placed.

`Merger.merge(name, experts, base)` runs the method's `merge_tensor` under jit, donating its
inputs (unless they alias mapped files), in row blocks when an elementwise merge of a large
tensor would exceed its share of the budget."""

import re
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxmerge import sharding
from jaxmerge.merging.config import MergeConfig
from jaxmerge.merging.plan import Plan
from jaxmerge.methods import get_method, parameter_key

# Inputs are donated so XLA may write the result over one of them (the base when dtypes
# match); the others are freed with it. XLA warns about the ones it did not reuse. Not
# inputs that alias a mapped file (safetensors): XLA would first copy those to donate them,
# which measured 1.12 → 0.77 ns an element for task arithmetic without donation.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

DEFAULT_RULES = ((".*", PartitionSpec("data")),)  # first dimension over every device


def merge_kernel(spec, hparams: dict, out_dtype, donate: bool = False) -> Callable:
    """jit((experts, base, weights, key, thresholds) -> merge_tensor(...).astype(out_dtype)).

    The one kernel every merge of a tensor runs, the engine's and the learned merges'
    alike (jaxmerge.learning scores candidates with it), so the same inputs give the same
    bits whoever calls it; `donate` hands the experts' and base's buffers to XLA.
    """

    def merge(experts, base, weights, key, thresholds):
        kwargs = dict(hparams)
        if spec.needs_base:
            kwargs["base"] = base
        if weights is not None:
            kwargs["weights"] = weights
        if spec.random:
            kwargs["key"] = key
        if thresholds is not None:
            kwargs["thresholds"] = thresholds
        return spec.merge_tensor(experts, **kwargs).astype(out_dtype)

    return jax.jit(merge, donate_argnums=(0, 1) if donate else ())


class Merger:
    """Holds the jitted kernels and shardings of one merge."""

    def __init__(
        self, config: MergeConfig, plan: Plan, mesh, thresholds=None, *, donate: bool = True
    ):
        self.config, self.plan, self.mesh = config, plan, mesh
        self.donate = donate
        self.spec = get_method(config.method)
        hparams = dict(config.hparams())
        hparams.pop("trim", None)
        self.hparams = hparams
        self.thresholds = thresholds
        self.weights = None if config.weights is None else jnp.asarray(config.weights, jnp.float32)
        self._weight_rules = [
            (re.compile(pattern), jnp.asarray(weights, jnp.float32))
            for pattern, weights in (config.weight_rules or ())
        ]
        self._kernels: dict = {}

    def weights_for(self, name: str):
        """The weights of parameter `name`: its first matching weight rule's, else `weights`."""
        for pattern, weights in self._weight_rules:
            if pattern.fullmatch(name):
                return weights
        return self.weights

    def sharding(self, name: str) -> NamedSharding:
        info = self.plan.params[name]
        spec = sharding.spec_from_rules(name, info.shape, DEFAULT_RULES, self.mesh)
        return NamedSharding(self.mesh, spec)

    def kernel(self, out_dtype) -> Callable:
        """jit(merge_tensor → cast), donating the experts and the base (if `donate`)."""
        if out_dtype not in self._kernels:
            self._kernels[out_dtype] = merge_kernel(self.spec, self.hparams, out_dtype, self.donate)
        return self._kernels[out_dtype]

    def merge(
        self, name: str, experts: list, base, block_bytes: int | None = None, thresholds=None
    ):
        """Merges one parameter; in row blocks if its float32 working set exceeds block_bytes.

        Only for elementwise methods (with TIES, once the thresholds are known: the whole
        model's, or this tensor's given as `thresholds`): each block's result is exactly
        the rows of the whole tensor's.
        """
        thresholds = self.thresholds if thresholds is None else thresholds
        key = parameter_key(self.config.seed, name) if self.spec.random else None
        kernel = self.kernel(self.plan.params[name].dtype)
        shape = self.plan.params[name].shape
        working = int(np.prod(shape)) * 4 * (len(experts) + 3)  # float32 temporaries
        blockwise = self.spec.elementwise and (not self.spec.global_trim or thresholds is not None)
        if not blockwise or block_bytes is None or working <= block_bytes or len(shape) < 2:
            return kernel(experts, base, self.weights_for(name), key, thresholds)
        rows = max(1, shape[0] * block_bytes // working)
        blocks = []
        for start in range(0, shape[0], rows):
            part = slice(start, start + rows)
            blocks.append(
                kernel(
                    [e[part] for e in experts],
                    None if base is None else base[part],
                    self.weights_for(name),
                    key,
                    thresholds,
                )
            )
        return jnp.concatenate(blocks)
