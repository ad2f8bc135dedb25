"""`jaxmerge train`: pre-train / fine-tune a T5 1.1 model on seqio tasks, as T5X does.

    jaxmerge train --gin_file=gin_configs/models/t5_tiny.gin \\
        --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR="'DIR'" \\
        --gin.MIXTURE_OR_TASK_NAME="'jaxmerge_pretrain'" --gin.TRAIN_STEPS=N

Gin configures `jaxmerge.training.train` (`train_script.train` in the gin files, as T5X's);
required macros: MODEL_DIR, MIXTURE_OR_TASK_NAME, TRAIN_STEPS (and INITIAL_CHECKPOINT_PATH
to fine-tune). Writes MODEL_DIR/config.gin at the start, operative_config.gin at the end.
"""

import argparse
import pathlib

from jaxmerge.cli import gin_flags, quiet
from jaxmerge.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gin_flags.add_gin_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import gin
    import jax

    from jaxmerge import training

    quiet.import_tensorflow(args.verbosity)  # before gin imports seqio
    jax.config.update("jax_threefry_partitionable", True)
    gin_flags.parse(args.gin_file, args.gin_bindings)
    try:
        model_dir = gin_flags.macro("MODEL_DIR")
        if not isinstance(model_dir, str):
            raise InputError("MODEL_DIR is required: pass --gin.MODEL_DIR=\"'DIR'\"")
        model_dir = pathlib.Path(model_dir)
        train_fn = gin.get_configurable(training.train)
    except (ValueError, KeyError) as e:
        raise InputError(f"gin config {args.gin_file}: {e}") from e
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.gin").write_text(gin.config_str())
    try:
        train_fn()
    except (ValueError, TypeError) as e:
        if "gin.REQUIRED" in str(e) or "REQUIRED" in str(e):
            raise InputError(f"gin config {args.gin_file}: {e}") from e
        raise
    (model_dir / "operative_config.gin").write_text(gin.operative_config_str())
    return 0
