"""`jaxmerge study`: the paper's grid, from the models to the report.

    jaxmerge study --gin_file=gin_configs/study/demo.gin --output OUT
    jaxmerge study --gin_file=gin_configs/study/ladder.gin --output OUT \\
        --gin.study.StudyConfig.seeds="[0, 1, 2]"
    jaxmerge study --output OUT --report_only        # report and figures from the table

Gin binds `study.StudyConfig.*` (jaxmerge/study/config.py: sizes, bases, num_experts,
methods, seeds, categories, training budgets, grids); flags win over gin. Writes
OUT/results.csv and .parquet (a row per cell and task), OUT/report.md, OUT/figures/,
OUT/study.json; trained models, finished cells and reference scores are cached under
OUT, so a re-run resumes and a widened grid computes only the new cells.
"""

import argparse
import dataclasses
import pathlib
import shlex
import sys

from jaxmerge.cli import gin_flags, quiet
from jaxmerge.errors import InputError

LIST_FLAGS = {"sizes": str, "bases": str, "num_experts": int, "methods": str, "seeds": int}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gin_flags.add_gin_arguments(parser)
    parser.add_argument("--output", required=True, help="the study's directory")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="rebuild OUT/report.md and OUT/figures/ from OUT/results.csv; run nothing",
    )
    for name, kind in LIST_FLAGS.items():
        parser.add_argument(f"--{name}", nargs="+", type=kind, help=f"StudyConfig.{name}")
    parser.add_argument("--categories", nargs="+", help="held-in categories with experts")
    parser.add_argument("--max_examples", type=int, help="rows per task of every evaluation")


def config_from(args: argparse.Namespace):
    """StudyConfig from gin (`study.StudyConfig.*`) then the flags."""
    import gin

    from jaxmerge.study import config as study_config

    gin_flags.parse(args.gin_file, args.gin_bindings)
    try:
        config = gin.get_configurable(study_config.StudyConfig)()
    except (ValueError, TypeError) as e:
        raise InputError(f"gin config {args.gin_file}: {' '.join(str(e).split())}") from e
    overrides = {
        n: tuple(getattr(args, n)) for n in (*LIST_FLAGS, "categories") if getattr(args, n)
    }
    if args.max_examples is not None:
        overrides["max_examples"] = args.max_examples
    config = dataclasses.replace(config, **overrides)
    if config.bases_from is not None:
        config = dataclasses.replace(config, bases_from=str(resolve(config.bases_from)))
    return config


def resolve(path: str) -> pathlib.Path:
    """A path as given, or else relative to the repository (gin files name repo paths)."""
    p = pathlib.Path(path)
    if p.exists() or p.is_absolute():
        return p
    return gin_flags.REPO_ROOT / p


def run(args: argparse.Namespace) -> int:
    quiet.import_tensorflow(args.verbosity)
    from jaxmerge.study import report

    output = pathlib.Path(args.output)
    if args.report_only:
        if not (output / "results.csv").exists():
            raise InputError(f"{output / 'results.csv'}: no results table to report on")
        path = report.build_report(output)
        print(f"report rebuilt from {output / 'results.csv'}: {path}")
        return 0
    import jax

    jax.config.update("jax_threefry_partitionable", True)
    from jaxmerge.study import run as study_run

    config = config_from(args)
    command = "jaxmerge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    path = study_run.run_study(config, output, command=command)
    print_summary(output, path)
    return 0


def print_summary(output: pathlib.Path, report_path: pathlib.Path) -> None:
    """The summary table of the report on the console, and where everything is."""
    text = report_path.read_text()
    start = text.find("| size")
    if start >= 0:
        end = text.find("\n\n", start)
        print(text[start : end if end >= 0 else None])
    print(f"\ntable:   {output / 'results.csv'} (and results.parquet)")
    print(f"report:  {report_path}")
    print(f"figures: {output / 'figures'}/")
