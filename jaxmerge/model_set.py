"""The built-in model set of one ladder size: where it lies, and how good it is.

`launch/local_experts.sh OUT SIZE` writes, under OUT,

    pretrained/                      the pre-trained base (span corruption)
    instruction_tuned/               the base instruction-tuned on jaxmerge_instructions
    experts/<base>/<category>/       one expert per held-in category, from each base
    multitask/<base>/                the multitask baseline (all of jaxmerge_held_in)

each a T5X model directory (checkpoint_<step>/, train_stats.json). `score` evaluates
every model on the validation split of every built-in held-in and held-out task with
one `Evaluator` (what `jaxmerge eval` runs) and returns one row per (model, task) with
the majority-answer baseline beside it; `check` states the ladder's quality bars
(Yadav et al. 2024's inputs: experts good at their own tasks, an instruction-tuned base
that is the stronger zero-shot model).
"""

import collections
import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

from jaxmerge.tasks import held_in, held_out, registry

BASES = ("pretrained", "instruction_tuned")
SIZES = ("nano", "micro", "tiny", "milli")  # gin_configs/models/t5_<size>.gin, smallest first


@dataclasses.dataclass(frozen=True)
class Model:
    role: str  # "base", "expert" or "multitask"
    base: str  # one of BASES
    category: str | None  # an expert's held-in category
    directory: pathlib.Path

    @property
    def name(self) -> str:
        return "/".join(x for x in (self.role, self.base, self.category) if x)


def models(root, categories: Sequence[str] | None = None) -> list[Model]:
    """Every model of the set under `root`, bases first (present or not)."""
    root = pathlib.Path(root)
    out = [Model("base", b, None, root / b) for b in BASES]
    for b in BASES:
        for c in categories or held_in.CATEGORIES:
            out.append(Model("expert", b, c, root / "experts" / b / c))
        out.append(Model("multitask", b, None, root / "multitask" / b))
    return out


def latest_checkpoint(directory: pathlib.Path) -> pathlib.Path | None:
    steps = [
        (int(p.name.split("_")[1]), p)
        for p in directory.glob("checkpoint_*")
        if p.name.split("_")[1].isdigit()
    ]
    return max(steps)[1] if steps else None


def base_checkpoint(root, size: str, base: str) -> pathlib.Path:
    """ROOT/<size>/<base>/checkpoint_N of the highest N: a base in launch/demo_bases.sh's
    layout. Raises FileNotFoundError naming the directory when it has none."""
    directory = pathlib.Path(root, size, base)
    path = latest_checkpoint(directory)
    if path is None:
        raise FileNotFoundError(f"{directory}: no checkpoint_<step> (launch/demo_bases.sh)")
    return path


def train_stats(directory: pathlib.Path) -> dict:
    """train_stats.json of a model directory ({} if absent): steps, tokens, seconds."""
    try:
        return json.loads((directory / "train_stats.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def dataset_generators() -> dict[str, tuple[str, str, Callable]]:
    """seqio task -> (kind, category, generator) of every held-in and held-out dataset."""
    out = {}
    for kind, categories in (("held_in", held_in.CATEGORIES), ("held_out", held_out.CATEGORIES)):
        for category, datasets in categories.items():
            out |= {f"jaxmerge_{d}": (kind, category, (d, g)) for d, g in datasets.items()}
    return out


def majority_baseline(task: str, split: str = "validation") -> float:
    """Percent of the split's examples whose answer is the most common answer."""
    kind, _, (dataset, generator) = dataset_generators()[task]
    examples = registry.examples(dataset, generator, split)
    key = "targets" if kind == "held_in" else "label"
    return 100 * collections.Counter(e[key] for e in examples).most_common(1)[0][1] / len(examples)


def score(
    root,
    *,
    split: str = "validation",
    categories: Sequence[str] | None = None,
    max_examples: int | None = None,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """One row per (model, task): {"model", "role", "base", "category", "task", "kind",
    "task_category", "accuracy", "majority", "step", "tokens", "seconds"}, for every
    model of the set that has a checkpoint. `max_examples`: rows per task (all if None;
    a held-out row is one (question, choice))."""
    from jaxmerge import checkpoints, training
    from jaxmerge.evaluation import Evaluator
    from jaxmerge.models import t5

    tasks = dataset_generators()
    evaluator, rows = None, []
    for model in models(root, categories):
        path = latest_checkpoint(model.directory)
        if path is None:
            progress(f"{model.name}: no checkpoint under {model.directory}, skipped")
            continue
        if evaluator is None:
            with checkpoints.open(path) as reader:
                config = t5.config_from_shapes({n: i.shape for n, i in reader.params.items()})
            evaluator = Evaluator(
                config,
                ["jaxmerge_held_in", "jaxmerge_held_out"],
                split=split,
                max_examples=max_examples,
            )
        params, step, _ = training.restore_checkpoint(path)
        metrics = evaluator.evaluate(params)
        stats = train_stats(model.directory)
        for task, values in sorted(metrics.items()):
            kind, task_category, _ = tasks[task]
            rows.append(
                {
                    "model": model.name,
                    "role": model.role,
                    "base": model.base,
                    "category": model.category,
                    "task": task,
                    "kind": kind,
                    "task_category": task_category,
                    "accuracy": values["accuracy"],
                    "majority": majority_baseline(task, split),
                    "step": step,
                    "tokens": stats.get("tokens"),
                    "seconds": stats.get("seconds"),
                }
            )
        progress(f"{model.name}: scored ({evaluator.last_timing.total_s:.0f} s)")
    return rows


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def halfway_bar(majority: float) -> float:
    """Issue 13's bar for an expert: halfway from the majority baseline to 100."""
    return (majority + 100) / 2


def expert_quality(rows: Sequence[dict]) -> list[dict]:
    """Each expert on its own category: mean accuracy, mean majority baseline, the halfway
    bar (majority + (100 - majority) / 2) and whether it is met, per dataset too."""
    out = []
    for (model, base, category), group in _groups(rows, "expert").items():
        own = [r for r in group if r["task_category"] == category]
        datasets = [
            {
                "task": r["task"],
                "accuracy": r["accuracy"],
                "majority": r["majority"],
                "halfway": halfway_bar(r["majority"]),
                "met": r["accuracy"] >= halfway_bar(r["majority"]),
            }
            for r in own
        ]
        accuracy, majority = _mean(r["accuracy"] for r in own), _mean(r["majority"] for r in own)
        out.append(
            {
                "model": model,
                "base": base,
                "category": category,
                "accuracy": accuracy,
                "majority": majority,
                "halfway": halfway_bar(majority),
                "met": all(d["met"] for d in datasets),
                "datasets": datasets,
            }
        )
    return out


def _groups(rows, role: str) -> dict:
    groups = collections.defaultdict(list)
    for r in rows:
        if r["role"] == role:
            groups[(r["model"], r["base"], r["category"])].append(r)
    return groups


def mean_accuracy(rows: Sequence[dict], model: str, kind: str) -> float:
    """A model's accuracy averaged over the tasks of `kind` ("held_in" or "held_out")."""
    return _mean(r["accuracy"] for r in rows if r["model"] == model and r["kind"] == kind)


def summary(rows: Sequence[dict]) -> dict:
    """The ladder's bars for one size: experts at least halfway from the majority baseline
    to 100 on every dataset of their category; the instruction-tuned base above the
    pre-trained one zero-shot on held-out; both multitask baselines' held-in / held-out."""
    experts = expert_quality(rows)
    held_out_of = {b: mean_accuracy(rows, f"base/{b}", "held_out") for b in BASES}
    return {
        "experts": experts,
        "experts_met": sum(e["met"] for e in experts),
        "experts_total": len(experts),
        "base_held_out": held_out_of,
        "held_out_majority": _mean(
            majority_baseline(t) for t, (k, _, _) in dataset_generators().items() if k == "held_out"
        ),
        "multitask": {
            b: {
                "held_in": mean_accuracy(rows, f"multitask/{b}", "held_in"),
                "held_out": mean_accuracy(rows, f"multitask/{b}", "held_out"),
            }
            for b in BASES
        },
    }
