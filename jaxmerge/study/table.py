"""The study's results table: one row per (cell, task), as `results.csv` and `results.parquet`.

A cell is (size, base, num_experts, seed, method); a row is one task's test score of that
cell's model, and its normalization (Yadav et al. 2024, "What Matters for Model Merging at
Scale?", arXiv:2410.03617, §3):

    held-in   normalized = accuracy / (the category's expert's test accuracy on the task)
    held-out  normalized = accuracy / (the base's zero-shot test accuracy on the task)

with `reference` the divisor and NaN where it is 0. Method "multitask" is the baseline (one
model trained on all held-in tasks, scored on the cell's tasks). Rows are plain dicts keyed
by `COLUMNS`; the CSV is the source of truth (`read_table`), the Parquet copy is for tools.
"""

import csv
import os
import pathlib
from collections.abc import Iterable, Mapping

from jaxmerge.errors import InputError

COLUMNS = (
    "size",
    "parameters",
    "base",
    "num_experts",
    "seed",
    "experts",
    "method",
    "hyperparameters",
    "validation_held_in",
    "task",
    "kind",
    "category",
    "accuracy",
    "reference",
    "normalized",
)
INTS = frozenset({"parameters", "num_experts", "seed"})
FLOATS = frozenset({"validation_held_in", "accuracy", "reference", "normalized"})
KINDS = ("held_in", "held_out")
CSV_NAME, PARQUET_NAME = "results.csv", "results.parquet"


def _typed(row: Mapping, where: str) -> dict:
    """`row` with every column converted to its type; InputError naming the column."""
    out = {}
    for column in COLUMNS:
        if column not in row:
            raise InputError(f"{where}: missing column {column!r}")
        value = row[column]
        kind = int if column in INTS else float if column in FLOATS else str
        try:
            out[column] = kind(value)
        except (TypeError, ValueError):
            raise InputError(
                f"{where}: column {column!r} is {value!r}, not {kind.__name__}"
            ) from None
    if out["kind"] not in KINDS:
        raise InputError(f"{where}: column 'kind' is {out['kind']!r}, expected one of {KINDS}")
    return out


def read_table(path) -> list[dict]:
    """The rows of a `results.csv`, typed: ints, floats ("nan" is NaN) and strings.

    InputError (one line, naming the file and the column) for a missing file or column, a
    value of the wrong type, or a `kind` other than held_in / held_out.
    """
    path = pathlib.Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise InputError(f"{path}: missing column {missing[0]!r}")
            return [_typed(row, f"{path}: line {reader.line_num}") for row in reader]
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (run the study first)") from None


def replace_atomically(path: pathlib.Path, write) -> None:
    """write(temporary path) in `path`'s directory, then rename it onto `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(rows: Iterable[Mapping], directory) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes `directory/results.csv` (csv module) and `directory/results.parquet`
    (pyarrow), each atomically, columns in `COLUMNS` order; returns their paths.

    Floats are written as Python's shortest round-trip repr ("nan" for NaN), so
    `read_table` gives back the same rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = directory / CSV_NAME, directory / PARQUET_NAME
    typed = [_typed(row, f"{csv_path}: row {i}") for i, row in enumerate(rows)]

    def write_csv(tmp: pathlib.Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(typed)

    def arrow_type(column):
        return pa.int64() if column in INTS else pa.float64() if column in FLOATS else pa.string()

    schema = pa.schema([(c, arrow_type(c)) for c in COLUMNS])
    table = pa.Table.from_pydict({c: [r[c] for r in typed] for c in COLUMNS}, schema=schema)
    replace_atomically(csv_path, write_csv)
    replace_atomically(parquet_path, lambda tmp: pq.write_table(table, tmp))
    return csv_path, parquet_path
