"""What one study runs: the grid, the training budgets and the search over hyperparameters.

A study (Yadav et al. 2024, "What Matters for Model Merging at Scale?", arXiv:2410.03617)
is the grid

    sizes × bases (pretrained / instruction-tuned) × num_experts × methods × seeds

where a seed picks which of the `categories` are merged: seed s orders the categories by
`random.Random(s)` and a cell of k experts merges the first k (so the subsets of one seed
are nested, 2 ⊂ 4 ⊂ …, and the number of experts is the only thing that changes along a
row). Every method's hyperparameters are chosen on the validation split from its `grids`
entry; every reported number is on the test split.

`StudyConfig` is plain data; `gin_configs/study/*.gin` bind it (`study.StudyConfig.*`)
at the command's edge, and `check` says in one line what is wrong with a grid.
"""

import dataclasses
import pathlib
import random
from collections.abc import Mapping, Sequence

from jaxmerge.errors import InputError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BASES = ("pretrained", "instruction_tuned")
FIXED_METHODS = ("average", "task_arithmetic", "ties", "dare_ties")
LEARNED = "learned"  # one coefficient per expert, found by CMA-ES on validation
LEARNED_SPACES = ("task_vector", "reallocate")  # StudyConfig.learned_space

# The paper's methods, each with a small grid chosen on validation (TIES: Yadav et al.
# 2023 search density and λ; DARE: Yu et al. 2024 the drop rate).
DEFAULT_GRIDS = {
    "average": {},
    "task_arithmetic": {"lam": (0.3, 0.5, 0.7, 1.0)},
    "ties": {"density": (0.2, 0.5), "lam": (0.7, 1.0)},
    "dare_ties": {"drop_rate": (0.5, 0.9), "lam": (0.7, 1.0)},
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The grid and everything that makes its models, merges and scores.

    Attributes:
      sizes: T5 sizes, each a `gin_configs/models/t5_<size>.gin`, smallest first.
      bases: which bases the experts are fine-tuned from.
      num_experts: k of each cell (at most len(categories)).
      methods: merge methods (names of `jaxmerge.methods.METHODS`) and "learned".
      seeds: one expert subset per seed (the module docstring).
      categories: the held-in categories with an expert: the pool subsets come from.
      pretrain_steps, instruction_steps, expert_steps, multitask_steps: training budgets
        (steps of batch 32) of the recipes in gin_configs/runs/ (pretrain, instruction_tune,
        expert, multitask).
      expert_learning_rate: peak learning rate of the expert recipe (None: the recipe's).
      warmup_steps: learning-rate warm-up of every fine-tuning run (less than its steps).
      training_seed: every training run's RANDOM_SEED.
      bases_from: a directory holding `<size>/<base>/checkpoint_N` for every size and base:
        those bases are used instead of training them (the demo's shipped bases).
      held_out: the seqio mixture of held-out tasks (never trained on).
      max_examples: rows per task of every evaluation (None: the whole split).
      grids: method -> {hyperparameter: values}, searched on validation.
      learned_generations, learned_popsize: the CMA-ES search of "learned".
      learned_space: what "learned" searches. "reallocate" (default): task arithmetic's
        total weight k·λ_TA shared out, θ = θ₀ + k·λ_TA Σᵢ cᵢ τᵢ with c on the simplex
        (starting uniform, which is task arithmetic's own merge), so the merge stays as
        far from the base as task arithmetic's and only the shares change. "task_vector":
        one free λᵢ per expert, θ = θ₀ + Σᵢ λᵢ τᵢ, from task arithmetic's λ. On the
        four-size grid (docs/learning.md) both beat the best fixed recipe on held-in; the
        free λᵢ lowered held-out at the two largest sizes, the reallocated shares at none.
    """

    sizes: Sequence[str] = ("nano", "micro")
    bases: Sequence[str] = BASES
    num_experts: Sequence[int] = (2, 4)
    methods: Sequence[str] = (*FIXED_METHODS, LEARNED)
    seeds: Sequence[int] = (0,)
    categories: Sequence[str] = ("sentiment", "topic", "structure_to_text", "multiple_choice_qa")
    pretrain_steps: int = 2000
    instruction_steps: int = 3000
    expert_steps: int = 300
    multitask_steps: int = 600
    expert_learning_rate: float | None = None
    warmup_steps: int = 50
    training_seed: int = 0
    bases_from: str | None = None
    held_out: str = "jaxmerge_held_out"
    max_examples: int | None = 32
    grids: Mapping[str, Mapping[str, Sequence[float]]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_GRIDS)
    )
    learned_generations: int = 4
    learned_popsize: int = 6
    learned_space: str = "reallocate"


def model_gin(size: str) -> pathlib.Path:
    return REPO_ROOT / "gin_configs" / "models" / f"t5_{size}.gin"


def check(config: StudyConfig) -> None:
    """InputError, one line naming the setting, for a grid that cannot run."""
    from jaxmerge import tasks
    from jaxmerge.methods import METHODS
    from jaxmerge.tasks import held_in

    def fail(setting: str, what: str) -> None:
        raise InputError(f"study grid: StudyConfig.{setting}: {what}")

    if not config.sizes:
        fail("sizes", "no size given")
    for size in config.sizes:
        if not model_gin(size).exists():
            known = sorted(p.stem[3:] for p in model_gin("x").parent.glob("t5_*.gin"))
            fail("sizes", f"unknown size {size!r} (no {model_gin(size)}; known: {known})")
    for base in config.bases:
        if base not in BASES:
            fail("bases", f"unknown base {base!r} (known: {list(BASES)})")
    if not config.bases:
        fail("bases", "no base given")
    for method in config.methods:
        if method != LEARNED and method not in METHODS:
            fail("methods", f"unknown method {method!r} (known: {sorted(METHODS)} and 'learned')")
        if method in ("slerp",):
            fail("methods", "slerp merges exactly two models; the study varies the number")
    if not config.methods:
        fail("methods", "no method given")
    for category in config.categories:
        if category not in held_in.CATEGORIES:
            fail(
                "categories", f"unknown held-in category {category!r} ({list(held_in.CATEGORIES)})"
            )
    if len(set(config.categories)) != len(config.categories):
        fail("categories", f"{list(config.categories)} names a category twice")
    for k in config.num_experts:
        if not 1 <= k <= len(config.categories):
            fail("num_experts", f"{k} experts: need 1 to {len(config.categories)} (the categories)")
    if not config.num_experts or not config.seeds:
        fail("num_experts" if not config.num_experts else "seeds", "empty")
    tasks.register()
    import seqio

    if config.held_out not in seqio.MixtureRegistry.names() | seqio.TaskRegistry.names():
        fail("held_out", f"unknown task or mixture {config.held_out!r}")
    for name in ("pretrain_steps", "instruction_steps", "expert_steps", "multitask_steps"):
        if getattr(config, name) < 1:
            fail(name, f"{getattr(config, name)}: must be at least 1")
    if config.max_examples is not None and config.max_examples < 1:
        fail("max_examples", f"{config.max_examples}: must be at least 1 (or None: all)")
    for method, grid in config.grids.items():
        if method not in METHODS:
            fail("grids", f"unknown method {method!r}")
        for name, values in grid.items():
            if not values:
                fail("grids", f"{method}.{name}: no value to search")
    if LEARNED in config.methods and (config.learned_generations < 1 or config.learned_popsize < 2):
        fail("learned_generations", "CMA-ES needs generations >= 1 and popsize >= 2")
    if config.learned_space not in LEARNED_SPACES:
        fail("learned_space", f"{config.learned_space!r}: choose from {', '.join(LEARNED_SPACES)}")
    if config.bases_from is not None:
        root = pathlib.Path(config.bases_from)
        for size in config.sizes:
            for base in config.bases:
                if not any((root / size / base).glob("checkpoint_*")):
                    fail("bases_from", f"{root / size / base}: no checkpoint_N")


def expert_subset(categories: Sequence[str], num_experts: int, seed: int) -> tuple[str, ...]:
    """The first `num_experts` categories in seed's order (nested over num_experts)."""
    order = random.Random(seed).sample(list(categories), len(categories))
    return tuple(order[:num_experts])


def hyperparameter_settings(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """Every combination of a method's grid, in order ([{}] for a method without one)."""
    settings = [{}]
    for name, values in grid.items():
        settings = [s | {name: float(v)} for s in settings for v in values]
    return settings
