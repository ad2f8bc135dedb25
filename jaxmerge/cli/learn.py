"""`jaxmerge learn`: learn merge coefficients (optax or CMA-ES), write the merged model.

    jaxmerge learn --base BASE --experts E1 E2 E3 --tasks jaxmerge_held_in_sentiment \\
        jaxmerge_held_in_topic --output OUT [--search gradient|cmaes] \\
        [--objective supervised|entropy] [--granularity task|tensor|group] \\
        [--group_rule 'encoder/layers_0/.*=enc0' ...] [--space task_vector|simplex] \\
        [--simplex_map softmax|projection] [--init 0.3 | --init_weights W1 .. WK] \\
        [--clamp 0 1] [--steps 100] \\
        [--learning_rate 1e-3] [--eval_period 20] [--patience N] [--generations 20] \\
        [--popsize N] [--sigma 0.2] [--task_weight TASK=W ...] [--reference TASK=SCORE ...]
        [--preprocess none|ties|dare] [--density 0.2] [--drop_rate 0.9]

--preprocess ties learns the coefficients over TIES's trimmed, sign-elected task vectors
(AdaMerging++), dare over DARE's dropped and rescaled ones; the merge is then written
from those checkpoints (OUT/preprocessed/), so its bytes are the merge that was scored.

Gin (`gin_configs/runs/learn.gin`) binds `learn_script.LearnConfig.*`, any optax
optimizer included (`learn_script.LearnConfig.optimizer = @optax.sgd`); flags win.
Writes OUT/merged/ (through the merge engine), OUT/coefficients.json (coefficients per
group, fitness history, settings) and OUT/tensorboard/. A killed run, re-run with the
same arguments, resumes. Bad input exits 2 with one line.
"""

import argparse

from jaxmerge.cli import gin_flags, quiet

SPEC_FLAGS = ("granularity", "space", "simplex_map", "init")
RUN_FLAGS = {
    "base": str,
    "output": str,
    "search": str,
    "objective": str,
    "learning_rate": float,
    "steps": int,
    "eval_period": int,
    "patience": int,
    "generations": int,
    "popsize": int,
    "sigma": float,
    "metric": str,
    "split": str,
    "batch_size": int,
    "max_examples": int,
    "seed": int,
    "preprocess": str,
    "density": float,
    "drop_rate": float,
    "num_partitions": int,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experts", nargs="+", help="the checkpoints to merge (K)")
    parser.add_argument("--tasks", nargs="+", help="validation tasks or mixtures")
    for name, kind in RUN_FLAGS.items():
        parser.add_argument(f"--{name}", type=kind)
    parser.add_argument("--granularity", help="task | tensor | group (default task)")
    parser.add_argument("--space", help="task_vector | simplex (default task_vector)")
    parser.add_argument("--simplex_map", help="softmax | projection (default softmax)")
    parser.add_argument("--init", type=float, help="initial coefficient (task_vector; 0.3)")
    parser.add_argument(
        "--init_weights",
        type=float,
        nargs="+",
        metavar="W",
        help="one initial coefficient per checkpoint (simplex: weights, normalized)",
    )
    parser.add_argument("--clamp", type=float, nargs=2, metavar=("LO", "HI"))
    parser.add_argument("--group_rule", action="append", metavar="REGEX=GROUP")
    parser.add_argument("--task_weight", action="append", metavar="TASK=WEIGHT")
    parser.add_argument("--reference", action="append", metavar="TASK=SCORE")
    parser.add_argument("--inputs_length", type=int, help="default 256")
    parser.add_argument("--targets_length", type=int, help="default 64")
    parser.add_argument("--overwrite", action="store_true", default=None)
    gin_flags.add_gin_arguments(parser)


def _pairs(flag: str, values: list[str] | None, convert=str) -> list[tuple[str, object]]:
    from jaxmerge.errors import InputError

    out = []
    for value in values or []:
        key, sep, rest = value.rpartition("=")
        if not sep or not key or not rest:
            raise InputError(f"--{flag} {value!r}: expected KEY=VALUE")
        try:
            out.append((key, convert(rest)))
        except ValueError:
            raise InputError(f"--{flag} {value!r}: {rest!r} is not a number") from None
    return out


def config_from_args(args: argparse.Namespace):
    import dataclasses

    import gin

    from jaxmerge.errors import InputError
    from jaxmerge.learning import run as learn_script
    from jaxmerge.learning.coefficients import CoefficientSpec

    gin_flags.parse(args.gin_file, args.gin_bindings)
    try:
        fields = dict(gin.get_bindings(learn_script.LearnConfig))
    except ValueError:
        fields = {}
    given = {name: getattr(args, name) for name in RUN_FLAGS}
    given.update(experts=args.experts, tasks=args.tasks, overwrite=args.overwrite)
    fields.update({k: v for k, v in given.items() if v is not None})
    spec = fields.get("coefficients") or CoefficientSpec()
    spec_given = {k: getattr(args, k) for k in SPEC_FLAGS if getattr(args, k) is not None}
    if args.clamp is not None:
        spec_given["clamp"] = tuple(args.clamp)
    if args.init_weights is not None:
        spec_given["init_weights"] = tuple(args.init_weights)
    if args.group_rule:
        spec_given["rules"] = tuple(_pairs("group_rule", args.group_rule))
        spec_given.setdefault("granularity", "group")
    fields["coefficients"] = dataclasses.replace(spec, **spec_given)
    if args.task_weight:
        fields["tasks_weights"] = dict(_pairs("task_weight", args.task_weight, float))
    if args.reference:
        fields["references"] = dict(_pairs("reference", args.reference, float))
    lengths = dict(fields.get("task_feature_lengths") or {"inputs": 256, "targets": 64})
    if args.inputs_length:
        lengths["inputs"] = args.inputs_length
    if args.targets_length:
        lengths["targets"] = args.targets_length
    fields["task_feature_lengths"] = lengths
    for name in ("experts", "tasks", "output"):
        if not fields.get(name):
            raise InputError(f"missing --{name}")
    try:
        return learn_script.LearnConfig(**fields)
    except TypeError as e:
        raise InputError(f"learn config: {e}") from None


def run(args: argparse.Namespace) -> int:
    quiet.import_tensorflow(args.verbosity)  # before gin or seqio import it
    from jaxmerge.learning import run as learn_script

    config = config_from_args(args)
    summary = learn_script.learn(config)
    for group, values in summary["coefficients"].items():
        print(f"{group}: " + " ".join(f"{v:.4f}" for v in values))
    print(f"fitness {summary['fitness']:.4g}; merged model {summary['merged']}")
    return 0
