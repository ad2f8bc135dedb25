"""One cell of the grid: merge k experts of one base with one method, choose, score.

A cell is (size, base, k, seed, method). Its experts are the seed's first k categories
(`config.expert_subset`). A fixed method (average, task arithmetic, TIES, DARE-TIES) is
run at every setting of its grid and the setting with the best normalized held-in score
on validation is kept; "learned" searches one coefficient per expert with CMA-ES on the
same validation score (Khalifa et al. 2024), from task arithmetic's merge in the same
cell: by default (`StudyConfig.learned_space = "reallocate"`) how to share task
arithmetic's total k·λ among the experts, θ = θ₀ + k·λ Σᵢ cᵢ τᵢ with c on the simplex,
or ("task_vector") free λᵢ, θ = θ₀ + Σᵢ λᵢ τᵢ, starting at task arithmetic's λ; "multitask"
is the baseline model, scored on the same tasks. The kept model is then scored on the
test split, and the cell gives one row per task (the columns of `jaxmerge.study.table`):

    held-in  normalized = s(merge, t) / s(expert of t's category, t)
    held-out normalized = s(merge, t) / s(base, t)                      (zero-shot)

Merges are formed in memory from the experts held on the devices (`merge_trees`, the
methods' own code) and scored by evaluators built once per size; a finished cell is
saved as JSON under a fingerprint of everything it depends on, so it is computed once.
"""

import dataclasses
import hashlib
import json
import math
import pathlib
import time

import numpy as np

from jaxmerge.methods import METHODS, merge_trees
from jaxmerge.models import params as params_lib
from jaxmerge.study import scoring
from jaxmerge.study.config import LEARNED, StudyConfig, hyperparameter_settings
from jaxmerge.study.models import Model

MULTITASK = "multitask"


@dataclasses.dataclass(frozen=True)
class Cell:
    size: str
    base: str
    num_experts: int
    seed: int
    experts: tuple[str, ...]  # the merged categories
    method: str  # a METHODS name, "learned" or "multitask"

    @property
    def label(self) -> str:
        return f"{self.size} {self.base} k={self.num_experts} seed {self.seed} {self.method}"


@dataclasses.dataclass
class Arena:
    """One size and base: the base and its experts on the devices, their models, and the
    reference scores (validation and test) every cell of that base is normalized by."""

    size: str
    base: str
    parameters: int
    base_model: Model
    expert_models: dict[str, Model]  # category -> model
    multitask_model: Model
    base_tree: dict  # flat name -> jax.Array
    expert_trees: dict[str, dict]  # category -> flat tree
    references: dict[str, dict[str, float]]  # split -> task -> reference score


def load_arena(size, base, models: list[Model], scorer: scoring.SizeScorer) -> Arena:
    """Reads the base and experts of `base` onto the devices and scores the references."""
    from jaxmerge import training

    def flat(model: Model) -> dict:
        tree, _, _ = training.restore_checkpoint(model.checkpoint)
        return params_lib.flatten(tree)

    base_model = next(m for m in models if m.role == base)
    experts = {m.category: m for m in models if m.role == "expert" and m.base == base}
    multitask = next(m for m in models if m.role == MULTITASK and m.base == base)
    references = {}
    for split in ("validation", "test"):
        refs = {t: s for t, s in scorer.model_scores(base_model, split).items()}
        for category, model in experts.items():
            scores = scorer.model_scores(model, split)
            refs |= {t: scores[t] for t in scorer.held_in_tasks[category]}
        references[split] = refs
    base_tree = flat(base_model)
    return Arena(
        size=size,
        base=base,
        parameters=int(sum(np.prod(a.shape) for a in base_tree.values())),
        base_model=base_model,
        expert_models=experts,
        multitask_model=multitask,
        base_tree=base_tree,
        expert_trees={c: flat(m) for c, m in experts.items()},
        references=references,
    )


def fingerprint(cell: Cell, arena: Arena, config: StudyConfig) -> str:
    """What a cell's rows depend on: its models, the method's search, the evaluation."""
    record = {
        "cell": dataclasses.asdict(cell),
        "models": [arena.base_model.fingerprint, arena.multitask_model.fingerprint]
        + [arena.expert_models[c].fingerprint for c in cell.experts],
        "grid": config.grids.get(cell.method, {}) if cell.method in METHODS else None,
        "evaluation": [config.held_out, config.max_examples],
    }
    if cell.method == LEARNED:  # starts from task arithmetic's choice
        record["grid"] = config.grids.get("task_arithmetic", {})
        record["search"] = [config.learned_generations, config.learned_popsize]
        if config.learned_space != "task_vector":  # the first space's cells keep their names
            record["space"] = config.learned_space
    text = json.dumps(record, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_file(root: pathlib.Path, cell: Cell, fp: str) -> pathlib.Path:
    name = f"k{cell.num_experts}-seed{cell.seed}-{cell.method}-{fp}.json"
    return root / "cells" / cell.size / cell.base / name


def _merge(method: str, arena: Arena, experts, setting: dict, seed: int) -> dict:
    spec = METHODS[method]
    trees = [arena.expert_trees[c] for c in experts]
    base = arena.base_tree if spec.needs_base else None
    return params_lib.unflatten(merge_trees(method, trees, base=base, seed=seed, **setting))


def choose(cell: Cell, arena: Arena, scorer, config: StudyConfig, start_lam=None):
    """(tree, hyperparameters, validation held-in) of the cell's method, chosen on
    validation; `start_lam`: task arithmetic's λ, where CMA-ES starts."""
    evaluator = scorer.search_evaluator(cell.experts)
    references = arena.references["validation"]

    def validation_score(tree) -> float:
        scores = scoring.accuracies(evaluator, tree)
        return scorer.held_in_normalized(scores, references, cell.experts)

    if cell.method == LEARNED:
        tasks = [t for c in cell.experts for t in scorer.held_in_tasks[c]]
        return _learned(cell, arena, evaluator, tasks, references, config, start_lam)
    best = None
    for setting in hyperparameter_settings(config.grids.get(cell.method, {})):
        tree = _merge(cell.method, arena, cell.experts, setting, cell.seed)
        score = validation_score(tree)
        if best is None or score > best[2] or (math.isnan(best[2]) and not math.isnan(score)):
            best = (tree, setting, score)
    return best


def _learned(cell, arena, evaluator, tasks, references, config, start_lam):
    from jaxmerge.learning import coefficients as coef_lib
    from jaxmerge.learning import search as search_lib
    from jaxmerge.learning.pool import Pool

    scorable = {t: references[t] for t in tasks if references.get(t)}
    if not scorable:  # every expert scores 0: nothing to normalize by, nothing to learn
        return _merge("task_arithmetic", arena, cell.experts, {}, cell.seed), {}, math.nan
    trees = [arena.expert_trees[c] for c in cell.experts]
    names = list(arena.base_tree)
    lam = 0.3 if start_lam is None else float(start_lam)
    if config.learned_space == "reallocate":  # θ₀ + kλ Σ cᵢ τᵢ = Σ cᵢ (θ₀ + kλ τᵢ), Σ cᵢ = 1
        total = len(trees) * lam
        base = arena.base_tree
        trees = [{n: base[n] + total * (t[n] - base[n]) for n in names} for t in trees]
        spec = coef_lib.CoefficientSpec(space="simplex")  # uniform: task arithmetic at λ
    else:
        total, spec = 1.0, coef_lib.CoefficientSpec(init=lam)
    pool = Pool(list(cell.experts), arena.base, trees, arena.base_tree, names)
    grouping = coef_lib.groups(spec, names)
    fitness = search_lib.merge_fitness(
        spec, grouping, pool, evaluator, tasks_weights=dict.fromkeys(scorable, 1.0),
        references=scorable,
    )  # fmt: skip
    x0 = coef_lib.initial_raw(spec, len(grouping.names), len(trees)).ravel()
    result = search_lib.search(
        fitness,
        x0,
        popsize=config.learned_popsize,
        generations=config.learned_generations,
        seed=cell.seed,
    )
    coefficients = coef_lib.coefficients(
        spec, np.reshape(np.asarray(result["best_x"], np.float32), (1, len(trees)))
    )
    chosen = {  # λᵢ of θ₀ + Σᵢ λᵢ τᵢ, in either space
        c: round(float(x) * total, 4)
        for c, x in zip(cell.experts, np.ravel(coefficients), strict=True)
    }
    return fitness.merged(result["best_x"]), {"lambdas": chosen}, float(result["best_fitness"])


def rows(cell: Cell, arena: Arena, scorer, test_scores, setting, validation_score) -> list:
    """The cell's table rows (jaxmerge.study.table.COLUMNS), from its test scores."""
    out = []
    references = arena.references["test"]
    tasks = [(t, "held_in") for c in cell.experts for t in scorer.held_in_tasks[c]]
    tasks += [(t, "held_out") for t in scorer.held_out_tasks]
    for task, kind in tasks:
        accuracy, reference = test_scores[task], references[task]
        out.append(
            {
                "size": cell.size,
                "parameters": arena.parameters,
                "base": cell.base,
                "num_experts": cell.num_experts,
                "seed": cell.seed,
                "experts": "+".join(cell.experts),
                "method": cell.method,
                "hyperparameters": json.dumps(setting, sort_keys=True),
                "validation_held_in": validation_score,
                "task": task,
                "kind": kind,
                "category": scorer.task_category[task],
                "accuracy": accuracy,
                "reference": reference,
                "normalized": accuracy / reference if reference else math.nan,
            }
        )
    return out


def run_cell(cell: Cell, arena: Arena, scorer, config: StudyConfig, start_lam=None) -> dict:
    """{"rows", "hyperparameters", "validation_held_in", "seconds"} of one cell."""
    start = time.perf_counter()
    if cell.method == MULTITASK:
        scores = scorer.model_scores(arena.multitask_model, "test")
        setting, validation_score = {}, math.nan
    else:
        tree, setting, validation_score = choose(cell, arena, scorer, config, start_lam)
        scores = scoring.accuracies(scorer.evaluator("test"), tree)
    return {
        "rows": rows(cell, arena, scorer, scores, setting, validation_score),
        "hyperparameters": setting,
        "validation_held_in": validation_score,
        "seconds": time.perf_counter() - start,
    }
