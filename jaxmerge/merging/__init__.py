"""The merge engine: `merge_checkpoints(MergeConfig(...))` merges checkpoints on disk.

A parameter's trip, one module a stage: `config` (what to merge, and the choices a flag
offers) → `preflight` (the flags, then the inputs' metadata, before any weight is read) →
`plan` (inputs agree; reads grouped within the memory budget) → `thresholds` (TIES' exact
trims, on the host with `host_select`'s numba loops or with XLA) → `kernels` (the jitted
method, inputs donated) → `executor` (reads ahead, writes behind, `nonfinite` guards) →
`manifest` (run key, manifest.json, config.gin).

May import: methods, checkpoints, sharding, errors, failpoints. Never the command layer
(`jaxmerge.cli`), argparse or gin. Gin files bind `merge.MergeConfig.<field>` through
the `jaxmerge.merge` alias module, as before the engine became a package.
"""

from jaxmerge.merging.config import CHOICES, DTYPES, HPARAMS, MergeConfig, parse_bytes
from jaxmerge.merging.executor import merge_checkpoints
from jaxmerge.merging.plan import Plan, make_plan

__all__ = [
    "CHOICES",
    "DTYPES",
    "HPARAMS",
    "MergeConfig",
    "Plan",
    "make_plan",
    "merge_checkpoints",
    "parse_bytes",
]
