"""`jaxmerge merge`: merge a base and experts into one checkpoint.

    jaxmerge merge --method ties --base BASE --experts E1 E2 --output OUT \\
        [--weights 1 1] [--lam 1.0] [--density 0.2] [--trim global|tensor] [--seed 0] \\
        [--output_format t5x|orbax|safetensors] [--dtype bfloat16|float32] \\
        [--memory_budget 4GB] [--overwrite] [--allow_nonfinite] [--allow_unrelated] \\
        [--gin_file gin_configs/methods/ties.gin] [--gin.KEY=VALUE]

Every flag is also the gin binding `merge.MergeConfig.<flag>`; flags given on
the command line win over gin. `gin_configs/runs/merge.gin` takes the inputs as
the CAPS macros BASE, EXPERTS and OUTPUT_DIR, as T5X run configs do.

Bad input or configuration exits with status 2 and one line naming the flag or the
file and the parameter (docs/reliability.md lists every case).
"""

import argparse

from jaxmerge.cli import gin_flags
from jaxmerge.merging import CHOICES

FLAGS = {
    "method": dict(help="merge method (see `jaxmerge.methods.METHODS`)"),
    "base": dict(help="base model checkpoint θ₀"),
    "experts": dict(nargs="+", help="expert checkpoints θ₁ … θ_K"),
    "output": dict(help="output directory (t5x/orbax: OUTPUT/checkpoint_<step>/)"),
    "weights": dict(type=float, nargs="+", help="one weight per expert (default 1)"),
    "lam": dict(type=float, help="λ, the scale of the merged task vector"),
    "density": dict(type=float, help="fraction kept by the TIES/Breadcrumbs trim or DELLA"),
    "drop_rate": dict(type=float, help="DARE drop probability p"),
    "trim": dict(choices=CHOICES["trim"], help="TIES trim over the model or per tensor"),
    "gamma": dict(type=float, help="Breadcrumbs: fraction of largest entries removed"),
    "epsilon": dict(type=float, help="DELLA: spread of keep probabilities"),
    "t": dict(type=float, help="slerp interpolation factor"),
    "seed": dict(type=int, help="seed of DARE/DELLA (default 0)"),
    "input_format": dict(choices=CHOICES["input_format"], help="skip detection"),
    "output_format": dict(choices=CHOICES["output_format"], help="default: the base's"),
    "dtype": dict(choices=CHOICES["dtype"], help="default: the inputs'"),
    "memory_budget": dict(
        help="e.g. 4GB (default: 2GiB, or half the free host or device memory if less)"
    ),
}


# On/off switches, False unless given (store_true, default None so that gin may set them).
SWITCHES = {
    "overwrite": "replace OUTPUT if it exists",
    "allow_nonfinite": "merge NaN/Inf input values as they are instead of refusing them",
    "allow_unrelated": "merge experts that do not look fine-tuned from the base "
    "(config.json architecture, or sampled values far from the base's)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, kwargs in FLAGS.items():
        parser.add_argument(f"--{name}", default=None, **kwargs)
    for name, help_text in SWITCHES.items():
        parser.add_argument(f"--{name}", action="store_true", default=None, help=help_text)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    gin_flags.add_gin_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import gin

    from jaxmerge import merging
    from jaxmerge.errors import InputError

    gin_flags.parse(args.gin_file, args.gin_bindings)
    given = {name: getattr(args, name) for name in [*FLAGS, *SWITCHES]}
    given = {k: v for k, v in given.items() if v is not None}
    if "memory_budget" in given:
        given["memory_budget"] = merging.parse_bytes(given["memory_budget"])
    try:
        bound = gin.get_bindings(merging.MergeConfig)
    except ValueError:  # no gin file or binding mentions merge.MergeConfig
        bound = {}
    bound = {k: v for k, v in bound.items() if k not in given}
    for key, value in bound.items():
        if value is gin.REQUIRED:
            raise InputError(
                f"--{key} is required (or its gin macro, e.g. --gin.OUTPUT_DIR=\"'DIR'\")"
            )
    fields = {**bound, **given}
    if isinstance(fields.get("memory_budget"), str):  # '4GB' from gin, as on the command line
        fields["memory_budget"] = merging.parse_bytes(fields["memory_budget"])
    for key in ("experts", "weights"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    missing = [f for f in ("method", "experts", "output") if f not in fields]
    if missing:
        raise InputError(f"missing --{missing[0]} (or merge.MergeConfig.{missing[0]} in gin)")
    try:
        config = merging.MergeConfig(**fields)
    except TypeError as e:
        raise InputError(f"merge config: {e}") from None
    merging.merge_checkpoints(config, quiet=args.quiet)
    return 0
