"""Normalized scores, as "What Matters for Model Merging at Scale?" defines them.

Yadav et al. 2024 (arXiv:2410.03617), §3: a model m's score s(m, t) on task t becomes

    held-in   n(m, t) = s(m, t) / s(expert of t's category, t)
    held-out  n(m, t) = s(m, t) / s(base, t)            (the base's zero-shot score)

then the mean over the tasks of a category, the mean over categories (`held_in`,
`held_out`), and, for a study, the mean over seeds (expert subsets, `mean_over_seeds`).
The multitask baseline is normalized the same way, so it is read in the same units.

A reference score of 0 leaves n(m, t) undefined (NaN); means skip undefined entries,
and are NaN only when nothing in them is defined. Pure functions over plain dicts.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

HELD_IN, HELD_OUT = "held_in", "held_out"


@dataclasses.dataclass(frozen=True)
class TaskRole:
    """How task scores are normalized: `kind` held_in or held_out, the `category` the task
    is averaged in, and the label of the `reference` model whose score divides it."""

    kind: str
    category: str
    reference: str


def primary_metric(task: str, metrics: Mapping[str, float], metric: str | None = None) -> float:
    """The one number of a task's metrics that is normalized: `metric` if given, else
    "accuracy", else the only one. ValueError when that is ambiguous or missing."""
    if metric is None and "accuracy" in metrics:
        metric = "accuracy"
    if metric is None and len(metrics) == 1:
        metric = next(iter(metrics))
    if metric is None or metric not in metrics:
        raise ValueError(
            f"task {task}: metrics {sorted(metrics)} have no {metric or 'accuracy'!r}; "
            "choose one with --metric"
        )
    return float(metrics[metric])


def ratio(score: float, reference: float) -> float:
    """score / reference, NaN where the reference is 0 (undefined)."""
    return score / reference if reference else math.nan


def _mean(values) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def normalized_scores(
    scores: Mapping[str, float],
    roles: Mapping[str, TaskRole],
    reference_scores: Mapping[str, Mapping[str, float]],
) -> dict:
    """One model's normalized scores.

    scores: task -> s(m, t); roles: task -> TaskRole (tasks without a role are left out);
    reference_scores: reference label -> task -> score. Returns {"tasks": {task: n(m, t)},
    "categories": {kind: {category: mean}}, "held_in": mean, "held_out": mean}, with NaN for
    a kind that has no task.
    """
    tasks = {
        task: ratio(scores[task], reference_scores[role.reference][task])
        for task, role in roles.items()
        if task in scores
    }
    categories: dict[str, dict[str, list[float]]] = {HELD_IN: {}, HELD_OUT: {}}
    for task, value in tasks.items():
        role = roles[task]
        categories[role.kind].setdefault(role.category, []).append(value)
    means = {kind: {c: _mean(v) for c, v in cats.items()} for kind, cats in categories.items()}
    return {
        "tasks": tasks,
        "categories": means,
        HELD_IN: _mean(means[HELD_IN].values()),
        HELD_OUT: _mean(means[HELD_OUT].values()),
    }


def mean_over_seeds(results: Sequence[Mapping]) -> dict[str, float]:
    """The held-in and held-out means of several `normalized_scores` (one per seed)."""
    return {kind: _mean([r[kind] for r in results]) for kind in (HELD_IN, HELD_OUT)}
