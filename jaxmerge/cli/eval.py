"""`jaxmerge eval`: score checkpoints on seqio tasks; normalized held-in and held-out scores.

    jaxmerge eval --checkpoint MERGED [--checkpoint ...] --tasks jaxmerge_held_in \\
        jaxmerge_held_out --output OUT [--base BASE] [--expert sentiment=E1 ...] \\
        [--multitask MT] [--split test] [--batch_size 32] [--max_examples N] [--module M]

or, as T5X's eval.py (macros CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME, EVAL_OUTPUT_DIR,
MIXTURE_OR_TASK_MODULE; the model gin is optional, else the checkpoint's shapes say it):

    jaxmerge eval --gin_file=gin_configs/models/t5_tiny.gin \\
        --gin_file=gin_configs/runs/eval.gin --gin.CHECKPOINT_PATH="'.../checkpoint_N'" \\
        --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_held_out'" --gin.EVAL_OUTPUT_DIR="'OUT'"

Flags win over gin (`eval_script.EvalConfig.<field>`). Writes OUT/metrics.json,
metrics.csv, tensorboard/ and config.gin; prints the table. Scores are cached by the
checkpoints' content (--cache_dir, default ~/.cache/jaxmerge/eval; --no_cache), so the
references are evaluated once. Bad input exits 2 with one line.
"""

import argparse
import contextlib
import time

from jaxmerge.cli import gin_flags, quiet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", action="append", dest="checkpoints", help="checkpoint (repeatable)"
    )
    parser.add_argument("--tasks", nargs="+", help="seqio Task or Mixture names")
    parser.add_argument("--output", help="output directory (EVAL_OUTPUT_DIR)")
    parser.add_argument(
        "--module", help="module that registers the tasks (T5X's MIXTURE_OR_TASK_MODULE)"
    )
    parser.add_argument("--split", help="split to evaluate (default test)")
    parser.add_argument("--batch_size", type=int, help="examples per batch (default 32)")
    parser.add_argument("--max_examples", type=int, help="at most this many examples per task")
    parser.add_argument("--inputs_length", type=int, help="input feature length (default 256)")
    parser.add_argument("--targets_length", type=int, help="target feature length (default 64)")
    parser.add_argument("--base", help="the base: held-out scores are divided by its")
    parser.add_argument(
        "--expert",
        action="append",
        metavar="CATEGORY=PATH",
        help="an expert: held-in scores of its category (or task/mixture) are divided by its",
    )
    parser.add_argument("--multitask", help="the multitask baseline, reported in the same units")
    parser.add_argument(
        "--metric", help="the metric normalized (default accuracy, or the only one)"
    )
    parser.add_argument("--cache_dir", help="score cache (default ~/.cache/jaxmerge/eval)")
    parser.add_argument("--no_cache", action="store_true", help="evaluate everything anew")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    gin_flags.add_gin_arguments(parser)


def _experts(pairs: list[str] | None) -> dict[str, str] | None:
    from jaxmerge.errors import InputError

    if pairs is None:
        return None
    experts = {}
    for pair in pairs:
        category, sep, path = pair.partition("=")
        if not sep or not category or not path:
            raise InputError(f"--expert {pair!r}: expected CATEGORY=PATH, e.g. sentiment=ckpt/")
        if category in experts:
            raise InputError(f"--expert {category}: given twice")
        experts[category] = path
    return experts


def config_from_args(args: argparse.Namespace):
    """EvalConfig from gin bindings, overridden by the flags given."""
    import gin

    from jaxmerge.errors import InputError
    from jaxmerge.evaluation import run as eval_script

    gin_flags.parse(args.gin_file, args.gin_bindings)
    try:
        bound = gin.get_bindings(eval_script.EvalConfig)
    except ValueError:
        bound = {}
    for key, value in bound.items():
        if value is gin.REQUIRED:
            raise InputError(f"EvalConfig.{key} is required (its gin macro, or a flag)")
    fields = dict(bound)
    if isinstance(fields.get("checkpoints"), str):  # CHECKPOINT_PATH: one path, as in T5X
        fields["checkpoints"] = [fields["checkpoints"]]
    if isinstance(fields.get("tasks"), str):
        fields["tasks"] = [fields["tasks"]]
    lengths = dict(fields.get("task_feature_lengths") or {"inputs": 256, "targets": 64})
    if args.inputs_length:
        lengths["inputs"] = args.inputs_length
    if args.targets_length:
        lengths["targets"] = args.targets_length
    given = {
        "checkpoints": args.checkpoints,
        "tasks": args.tasks,
        "output_dir": args.output,
        "module": args.module,
        "split": args.split,
        "batch_size": args.batch_size,
        "max_examples": args.max_examples,
        "base": args.base,
        "experts": _experts(args.expert),
        "multitask": args.multitask,
        "metric": args.metric,
        "cache_dir": args.cache_dir,
        "overwrite": args.overwrite,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    fields["task_feature_lengths"] = lengths
    if args.no_cache:
        fields["cache_dir"] = None
    if "model" not in fields:
        try:
            fields["model"] = gin_flags.macro("MODEL")  # a model gin file was given
        except ValueError:
            pass
    for name, flag in (
        ("checkpoints", "--checkpoint"),
        ("tasks", "--tasks"),
        ("output_dir", "--output"),
    ):
        if not fields.get(name):
            raise InputError(f"missing {flag} (or its gin macro; see gin_configs/runs/eval.gin)")
    try:
        return eval_script.EvalConfig(**fields)
    except TypeError as e:
        raise InputError(f"eval config: {e}") from None


def run(args: argparse.Namespace) -> int:
    import gin

    quiet.import_tensorflow(args.verbosity)  # before gin or seqio import it
    from jaxmerge.evaluation import run as eval_script

    config = config_from_args(args)
    with _progress_bar(args.quiet) as progress:
        results = eval_script.evaluate_checkpoints(
            config, extra_files={"config.gin": gin.config_str()}, progress=progress
        )
    print_table(results)
    if not results.reused:
        print(f"wrote {results.output_dir}/metrics.json, metrics.csv, tensorboard/")
    return 0


@contextlib.contextmanager
def _progress_bar(quiet: bool):
    """progress(label, done, total) drawing a rich bar with examples/s, or None when quiet
    or not on a terminal."""
    import sys

    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns.append(TextColumn("{task.fields[rate]}"))
    tasks: dict[str, tuple] = {}
    with Progress(*columns, transient=True) as bar:

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = (bar.add_task(label, total=total, rate=""), time.perf_counter())
            task, start = tasks[label]
            rate = f"{done / max(time.perf_counter() - start, 1e-9):.1f} examples/s"
            bar.update(task, completed=done, rate=rate)

        yield progress


def print_table(results) -> None:
    """Per task, each model's primary metric; then the normalized means."""
    import math

    from rich.console import Console
    from rich.table import Table

    from jaxmerge.evaluation.normalize import HELD_IN, HELD_OUT

    table = Table(title="jaxmerge eval", show_lines=False)
    table.add_column("task")
    table.add_column("kind / category")
    for model in results.models:
        table.add_column(model.label, justify="right")
    tasks = list(results.models[0].metrics) if results.models else []
    for task in tasks:
        role = results.roles.get(task)
        cells = []
        for model in results.models:
            metrics = model.metrics[task]
            value = metrics.get("accuracy", next(iter(metrics.values())))
            cells.append(f"{value:.1f}")
        table.add_row(task, f"{role.kind} / {role.category}" if role else "", *cells)

    def fmt(value) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.3f}"

    for kind in (HELD_IN, HELD_OUT):
        row = [fmt(results.normalized[m.label][kind]) for m in results.models]
        table.add_row(f"normalized {kind.replace('_', '-')}", "", *row, style="bold")
    Console().print(table)
