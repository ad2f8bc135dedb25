"""Scores of one size's models and merges: evaluators built once, reference scores cached.

Per size, one test `Evaluator` over the held-in tasks of every category and the held-out
tasks, one validation `Evaluator` over the same tasks (the references and the quality
check), and one validation `Evaluator` per expert subset over just its held-in tasks (the
search over hyperparameters and coefficients, called many times). Each is built when
first needed (a fully cached study builds none) and scores any number of parameter trees
without rebuilding data or recompiling.

A trained model's scores are cached in its directory (`scores.json`, keyed by the split,
the tasks and `max_examples`), so references are computed once per study, whatever is
re-run.
"""

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

from jaxmerge.evaluation import normalize
from jaxmerge.evaluation import run as eval_run
from jaxmerge.evaluation.evaluator import Evaluator
from jaxmerge.study.models import Model
from jaxmerge.tasks import held_out as held_out_lib

LENGTHS = {"inputs": 256, "targets": 64}  # every built-in task fits (tasks/lengths.py)


def accuracies(evaluator: Evaluator, params) -> dict[str, float]:
    """{task: primary metric} of one parameter tree."""
    return {t: normalize.primary_metric(t, m) for t, m in evaluator.evaluate(params).items()}


class SizeScorer:
    """The evaluators of one size and the cached scores of its models."""

    def __init__(
        self,
        model_config,
        categories: Sequence[str],
        held_out: str,
        max_examples: int | None,
    ):
        self.model_config, self.max_examples = model_config, max_examples
        self.held_in_tasks = {c: eval_run.expert_tasks(c) for c in categories}
        self.held_out_tasks = eval_run.leaf_tasks(held_out)
        every = [t for c in categories for t in self.held_in_tasks[c]] + self.held_out_tasks
        self.task_category = {t: c for c, ts in self.held_in_tasks.items() for t in ts}
        out_category = {f"jaxmerge_{d}": c for c, ds in held_out_lib.CATEGORIES.items() for d in ds}
        self.task_category |= {t: out_category.get(t, t) for t in self.held_out_tasks}
        self._every = every
        self._evaluators: dict[str, Evaluator] = {}  # built when first needed
        self._search: dict[tuple[str, ...], Evaluator] = {}

    def _evaluator(self, task_names: Sequence[str], split: str) -> Evaluator:
        return Evaluator(
            self.model_config,
            list(task_names),
            split=split,
            task_feature_lengths=LENGTHS,
            max_examples=self.max_examples,
        )

    def evaluator(self, split: str) -> Evaluator:
        """The evaluator of every task of the size on `split` (validation or test)."""
        if split not in self._evaluators:
            self._evaluators[split] = self._evaluator(self._every, split)
        return self._evaluators[split]

    def search_evaluator(self, categories: Sequence[str]) -> Evaluator:
        """A validation evaluator of just these categories' held-in tasks."""
        key = tuple(sorted(categories))
        if key not in self._search:
            names = [t for c in key for t in self.held_in_tasks[c]]
            self._search[key] = self._evaluator(names, "validation")
        return self._search[key]

    def model_scores(self, model: Model, split: str) -> dict[str, float]:
        """{task: accuracy} of a trained model on every task of the size, cached."""
        key = hashlib.sha256(
            json.dumps([split, self._every, self.max_examples, model.step]).encode()
        ).hexdigest()[:16]
        cache_file = model.directory / "scores.json"
        cache = _read_json(cache_file)
        if key not in cache:
            from jaxmerge import training

            params, _, _ = training.restore_checkpoint(model.checkpoint)
            cache[key] = accuracies(self.evaluator(split), params)
            write_json(cache_file, cache)
        return cache[key]

    def held_in_normalized(
        self, scores: Mapping[str, float], references: Mapping[str, float], categories
    ) -> float:
        """The paper's held-in score over `categories`: mean over categories of the mean
        over their tasks of score / reference (NaN entries skipped)."""
        roles = {
            t: normalize.TaskRole(normalize.HELD_IN, c, "experts")
            for c in categories
            for t in self.held_in_tasks[c]
        }
        return normalize.normalized_scores(scores, roles, {"experts": references})["held_in"]


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def write_json(path: pathlib.Path, value) -> None:
    """`value` as JSON at `path`, replaced atomically (a kill leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)
