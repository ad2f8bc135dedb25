"""`run_study(config, output)`: the grid from nothing (or from its cache) to the report.

    for each size:  models (trained or reused) ─► quality check (printed) ─► references
      for each base, k, seed: the seed's k experts ─► each method: grid on validation,
                                                      the chosen merge scored on test
    ─► OUT/results.csv + results.parquet (a row per cell and task) ─► OUT/report.md,
       OUT/figures/*.png (jaxmerge.study.report, rebuilt from the table alone)

Everything lands under OUT: `models/` (every trained model, by fingerprint), `cells/`
(every finished cell's rows), `logs/` (each training's log), `study.json` (the
configuration, the quality check, the time it took). A killed study re-run skips what
is finished; a widened grid computes only the new cells.
"""

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable

from jaxmerge import model_set
from jaxmerge.study import cells as cells_lib
from jaxmerge.study import models as models_lib
from jaxmerge.study import report, scoring, table
from jaxmerge.study.config import LEARNED, StudyConfig, check, expert_subset


def _quality_rows(models, scorer: scoring.SizeScorer) -> list[dict]:
    """Validation rows in `jaxmerge.model_set`'s format, for its quality summary."""
    out = []
    for m in models:
        role = "base" if m.role in ("pretrained", "instruction_tuned") else m.role
        base = m.role if role == "base" else m.base
        for task, accuracy in scorer.model_scores(m, "validation").items():
            kind = "held_out" if task in scorer.held_out_tasks else "held_in"
            out.append(
                {
                    "model": m.name,
                    "role": role,
                    "base": base,
                    "category": m.category,
                    "task": task,
                    "kind": kind,
                    "task_category": scorer.task_category[task],
                    "accuracy": accuracy,
                    "majority": model_set.majority_baseline(task),
                }
            )
    return out


def quality(models, scorer, log: Callable[[str], None]) -> dict:
    """The real-experts bars (issue 13) for one size, printed: each expert's own-category
    validation score beside its majority-answer baseline, both bases' zero-shot
    held-out, the multitask baselines."""
    summary = model_set.summary(_quality_rows(models, scorer))
    for e in summary["experts"]:
        log(
            f"    {e['model']}: {e['accuracy']:.0f} on its category (majority "
            f"{e['majority']:.0f}, bar {e['halfway']:.0f}): {'met' if e['met'] else 'NOT met'}"
        )
    zero_shot = summary["base_held_out"]
    log(
        "    zero-shot held-out: "
        + ", ".join(f"{b} {v:.1f}" for b, v in zero_shot.items() if not math.isnan(v))
        + f" (majority {summary['held_out_majority']:.1f})"
    )
    for b, mt in summary["multitask"].items():
        if not math.isnan(mt["held_in"]):
            log(f"    multitask/{b}: held-in {mt['held_in']:.1f}, held-out {mt['held_out']:.1f}")
    log(f"    experts at the bar: {summary['experts_met']} of {summary['experts_total']}")
    return {k: v for k, v in summary.items() if k != "experts"} | {
        "experts": [{k: v for k, v in e.items() if k != "datasets"} for e in summary["experts"]]
    }


def _cells(config: StudyConfig, size: str, base: str) -> list[cells_lib.Cell]:
    methods = [m for m in config.methods if m != LEARNED]
    if LEARNED in config.methods:  # after task arithmetic, whose λ it starts from
        methods.append(LEARNED)
    out = []
    for k in config.num_experts:
        for seed in config.seeds:
            experts = expert_subset(config.categories, k, seed)
            for method in [*methods, cells_lib.MULTITASK]:
                out.append(cells_lib.Cell(size, base, k, seed, experts, method))
    return out


def run_study(
    config: StudyConfig,
    output,
    *,
    command: str | None = None,
    title: str = "What matters for model merging at scale, at CPU scale",
    log: Callable[[str], None] = print,
) -> pathlib.Path:
    """Runs (or resumes) the study; returns the report's path."""
    from jaxmerge import tasks
    from jaxmerge.evaluation import run as eval_run

    check(config)
    tasks.register()
    root = pathlib.Path(output)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n_cells = len(config.sizes) * len(config.bases) * len(_cells(config, "x", "x"))
    log(
        f"study: {len(config.sizes)} sizes x {len(config.bases)} bases x "
        f"{len(config.num_experts)} expert counts x {len(config.seeds)} seeds x "
        f"{len(config.methods)} methods (+ multitask): {n_cells} cells -> {root}"
    )
    all_rows, qualities, done, cell_seconds = [], {}, 0, []
    for size in config.sizes:
        models = models_lib.plan(config, size, root)
        todo = sum(not m.done for m in models)
        stage = time.perf_counter()
        log(
            f"{size}: models: {len(models)}, {todo} to make" + (" (all cached)" if not todo else "")
        )
        models_lib.build(config, root, models, log=log)
        if todo:
            log(f"{size}: models made in {time.perf_counter() - stage:.0f} s")
        model_config = eval_run.model_config(str(models[0].checkpoint))
        scorer = scoring.SizeScorer(
            model_config, config.categories, config.held_out, config.max_examples
        )
        stage = time.perf_counter()
        log(f"{size}: quality of the model set (validation, {config.max_examples} rows a task)")
        qualities[size] = quality(models, scorer, log)
        log(f"{size}: quality checked in {time.perf_counter() - stage:.0f} s")
        for base in config.bases:
            arena = cells_lib.load_arena(size, base, models, scorer)
            lam = {}
            for cell in _cells(config, size, base):
                fp = cells_lib.fingerprint(cell, arena, config)
                path = cells_lib.cell_file(root, cell, fp)
                cached = path.exists()
                if cached:
                    result = json.loads(path.read_text())
                else:
                    start_lam = lam.get((cell.num_experts, cell.seed))
                    result = cells_lib.run_cell(cell, arena, scorer, config, start_lam)
                    scoring.write_json(path, result)
                if cell.method == "task_arithmetic":
                    lam[(cell.num_experts, cell.seed)] = result["hyperparameters"].get("lam")
                all_rows.extend(result["rows"])
                done += 1
                if not cached:
                    cell_seconds.append(result["seconds"])
                elapsed = time.perf_counter() - start
                left = (n_cells - done) * sum(cell_seconds) / max(1, len(cell_seconds))
                log(
                    f"  [{done}/{n_cells}] {cell.label}: {_gist(result)}"
                    + (" (cached)" if cached else f", {result['seconds']:.1f} s")
                    + f"; {elapsed / 60:.1f} min so far"
                    + (f", cells left about {left / 60:.1f} min" if left else "")
                )
    table.write_table(all_rows, root)
    seconds = time.perf_counter() - start
    study = {
        "command": command,
        "seconds": seconds,
        "config": dataclasses.asdict(config),
        "quality": qualities,
    }
    scoring.write_json(root / "study.json", study)
    path = report.build_report(root, title=title)
    log(f"study done in {seconds / 60:.1f} min: {root / 'results.csv'}, {path}")
    return path


def _gist(result: dict) -> str:
    """One cell's held-in and held-out (the report's aggregation) and its chosen setting."""
    (scores,) = report.cell_scores(result["rows"])
    setting = result["hyperparameters"]
    chosen = f" ({', '.join(f'{k}={v}' for k, v in setting.items())})" if setting else ""
    return f"held-in {scores['held_in']:.2f}, held-out {scores['held_out']:.2f}{chosen}"
