"""Gin at the edges, as T5X: `--gin_file=F` and `--gin.KEY=VALUE` flags.

Gin files begin `from __gin__ import dynamic_registration`; required values are
CAPS macros `= %gin.REQUIRED`; `include 'gin_configs/...'` paths resolve against
the current directory and the repository root.
"""

import argparse
import pathlib

import gin

from jaxmerge import sharding

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# `--gin.jaxmerge.configured_mesh.shape = (4, 2)` etc.: the mesh from gin, at the edge; the
# library's `sharding.make_mesh` stays gin-free.
configured_mesh = gin.external_configurable(
    sharding.make_mesh, "configured_mesh", module="jaxmerge"
)


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --gin_file (repeatable) and --gin.KEY=VALUE (repeatable) to `parser`."""
    parser.add_argument("--gin_file", action="append", default=[], help="gin config file")
    parser.add_argument(
        "--gin_bindings", action="append", default=[], help="gin binding, e.g. 'A.b = 1'"
    )


def expand_gin_flags(argv: list[str]) -> list[str]:
    """Rewrites T5X-style `--gin.KEY=VALUE` as `--gin_bindings=KEY = VALUE` for argparse."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin.") :].split("=", 1)
            arg = f"--gin_bindings={key} = {value}"
        out.append(arg)
    return out


def parse(gin_files: list[str], bindings: list[str]) -> None:
    """Clears gin, then parses files and bindings; errors become InputError."""
    from jaxmerge.errors import InputError

    gin.clear_config()
    for path in (pathlib.Path.cwd(), REPO_ROOT):
        gin.add_config_file_search_path(str(path))
    for f in gin_files:
        if not any((p / f).exists() for p in (pathlib.Path.cwd(), REPO_ROOT)):
            raise InputError(f"{f}: gin file not found")
    try:
        gin.parse_config_files_and_bindings(gin_files, bindings, finalize_config=False)
    except (ValueError, SyntaxError, ImportError) as e:
        gist = " ".join(str(e).split())  # gin's message spans lines; errors are one line
        raise InputError(f"gin config {gin_files} {bindings}: {gist}") from e


def macro(name: str):
    """The value of gin macro `name` (evaluating `@f()` references)."""
    value = gin.query_parameter(f"%{name}")
    return value.scoped_configurable_fn() if hasattr(value, "scoped_configurable_fn") else value
