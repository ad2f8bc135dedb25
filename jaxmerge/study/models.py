"""The models a study merges, made by the project's own training recipes and cached.

For each size: the pre-trained base (`gin_configs/runs/pretrain.gin`), the
instruction-tuned base (`instruction_tune.gin`, from the pre-trained one), one expert per
category from each base (`expert.gin`) and the multitask baseline from each base
(`multitask.gin` on the datasets of every category of the study: the paper's "all
held-in tasks"), each trained in this process by
`jaxmerge.training.train` configured from those gin files, as `jaxmerge train` would.

Every model lives in `STUDY/models/<size>/<name>-<fingerprint>/`, where the fingerprint
hashes what makes it: the size's and the recipe's gin files, the bindings (task, steps,
learning rate, seed), the source of the generated tasks and the parent model's
fingerprint. A model whose checkpoint at the target step exists is reused; a killed
training resumes from its newest checkpoint; a changed budget or recipe trains a new
model beside the old one. Bases may instead come from `bases_from` (copied in, their
bytes fingerprinted).
"""

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence

from jaxmerge.errors import InputError
from jaxmerge.study.config import BASES, REPO_ROOT, StudyConfig, model_gin

RUNS = REPO_ROOT / "gin_configs" / "runs"
_RECIPE_INCLUDES = ("finetune.gin", "built_in_base.gin")


@dataclasses.dataclass(frozen=True)
class Model:
    """One model of a size's set. `role`: pretrained, instruction_tuned, expert, multitask."""

    size: str
    role: str
    base: str | None  # the base an expert or multitask model is fine-tuned from
    category: str | None  # an expert's held-in category
    directory: pathlib.Path
    step: int  # the step of the finished checkpoint
    fingerprint: str
    recipe: str | None  # gin_configs/runs/<recipe>; None: copied from bases_from
    bindings: tuple[str, ...] = ()
    parent: "Model | None" = None

    @property
    def name(self) -> str:
        """base/pretrained, expert/instruction_tuned/sentiment, multitask/pretrained, ..."""
        if self.role in BASES:
            return f"base/{self.role}"
        return "/".join(x for x in (self.role, self.base, self.category) if x)

    @property
    def checkpoint(self) -> pathlib.Path:
        return self.directory / f"checkpoint_{self.step}"

    @property
    def done(self) -> bool:
        return self.checkpoint.is_dir()


def _source_digest() -> str:
    """What the generated data and the model depend on: the tasks' and model's source."""
    digest = hashlib.sha256()
    package = REPO_ROOT / "jaxmerge"
    for path in sorted([*(package / "tasks").glob("*.py"), *(package / "models").glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _fingerprint(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def _checkpoint_step(directory: pathlib.Path) -> tuple[pathlib.Path, int]:
    """The newest finished checkpoint_<step> of a model directory, and its step."""
    from jaxmerge import training

    path = training.latest_checkpoint(directory)
    if path is None:
        raise InputError(f"{directory}: no checkpoint_N")
    return path, int(path.name.split("_")[1])


def plan(config: StudyConfig, size: str, root: pathlib.Path) -> list[Model]:
    """Every model of `size`'s set, parents before children, done or not."""
    from jaxmerge.evaluation import references
    from jaxmerge.tasks import registry

    sources = _source_digest()
    recipe_texts = {
        name: (RUNS / name).read_text()
        for name in ("pretrain.gin", "instruction_tune.gin", "expert.gin", "multitask.gin")
        + _RECIPE_INCLUDES
    }
    size_text = (
        model_gin(size).read_text() + (REPO_ROOT / "gin_configs/models/t5_1_1.gin").read_text()
    )

    def model(role, base, category, recipe, bindings, steps, parent=None) -> Model:
        start = parent.step if parent else 0
        bindings = (
            *bindings,
            f"TRAIN_STEPS = {start + steps}",
            f"RANDOM_SEED = {config.training_seed}",
        )
        if parent is not None:
            bindings += (
                f"INITIAL_CHECKPOINT_PATH = '{parent.checkpoint}'",
                f"DECAY_STEPS = {steps}",
                f"LR_WARMUP_STEPS = {min(config.warmup_steps, steps - 1)}",
            )
        record = {
            "size": size_text,
            "recipe": recipe_texts[recipe] + "".join(recipe_texts[i] for i in _RECIPE_INCLUDES),
            "bindings": [b for b in bindings if not b.startswith("INITIAL_CHECKPOINT_PATH")],
            "parent": parent.fingerprint if parent else None,
            "sources": sources,
        }
        fp = _fingerprint(record)
        label = "-".join(x for x in (role, base, category) if x)
        directory = root / "models" / size / f"{label}-{fp}"
        return Model(
            size, role, base, category, directory, start + steps, fp, recipe, bindings, parent
        )

    bases = {}
    if config.bases_from is not None:
        for base in config.bases:
            source, step = _checkpoint_step(pathlib.Path(config.bases_from) / size / base)
            fp = _fingerprint({"copied": references.fingerprint(source)})
            directory = root / "models" / size / f"{base}-{fp}"
            bases[base] = Model(size, base, None, None, directory, step, fp, None)
    else:
        pretrained = model(
            "pretrained", None, None, "pretrain.gin",
            ("MIXTURE_OR_TASK_NAME = 'jaxmerge_pretrain'",), config.pretrain_steps,
        )  # fmt: skip
        bases["pretrained"] = pretrained  # instruction tuning starts from it
    if config.bases_from is None and "instruction_tuned" in config.bases:
        bases["instruction_tuned"] = model(
            "instruction_tuned", None, None, "instruction_tune.gin", (),
            config.instruction_steps, bases["pretrained"],
        )  # fmt: skip
    out = [bases[b] for b in BASES if b in bases]
    lr = (
        ()
        if config.expert_learning_rate is None
        else (f"LEARNING_RATE = {config.expert_learning_rate}",)
    )
    # The multitask baseline learns the study's whole held-in suite: every category.
    mixture = f"MIXTURE_OR_TASK_NAME = '{registry.held_in_mixture(config.categories)}'"
    for base in config.bases:
        for category in config.categories:
            task = f"MIXTURE_OR_TASK_NAME = 'jaxmerge_held_in_{category}'"
            out.append(
                model(
                    "expert",
                    base,
                    category,
                    "expert.gin",
                    (task, *lr),
                    config.expert_steps,
                    bases[base],
                )
            )
        out.append(
            model("multitask", base, None, "multitask.gin", (mixture,), config.multitask_steps,
                  bases[base])
        )  # fmt: skip
    return out


def train(model: Model, log_file: pathlib.Path) -> None:
    """Trains (or resumes) `model` with its recipe, as `jaxmerge train` does; the training
    log goes to `log_file`."""
    import gin

    from jaxmerge import training

    model.directory.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    gin.clear_config()
    gin.add_config_file_search_path(str(REPO_ROOT))
    bindings = [*model.bindings, f"MODEL_DIR = '{model.directory}'"]
    try:
        gin.parse_config_files_and_bindings(
            [str(model_gin(model.size)), str(RUNS / model.recipe)], bindings, finalize_config=False
        )
        (model.directory / "config.gin").write_text(gin.config_str())
        with log_file.open("a") as log, contextlib.redirect_stdout(log):
            gin.get_configurable(training.train)()
        (model.directory / "operative_config.gin").write_text(gin.operative_config_str())
    finally:
        gin.clear_config()


def copy_base(model: Model, source_root: pathlib.Path) -> None:
    source, _ = _checkpoint_step(source_root / model.size / model.role)
    staging = model.directory.with_name(model.directory.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copytree(source, staging / source.name)
    for extra in ("train_stats.json", "config.gin"):
        if (source.parent / extra).exists():
            shutil.copy(source.parent / extra, staging / extra)
    shutil.rmtree(model.directory, ignore_errors=True)
    staging.rename(model.directory)


def build(
    config: StudyConfig,
    root: pathlib.Path,
    models: Sequence[Model],
    *,
    log: Callable[[str], None] = print,
) -> None:
    """Makes every model of `models` that is not done, in order, one progress line each
    (what, steps, seconds, and an estimate of the training left)."""
    todo = [m for m in models if not m.done]
    if not todo:
        return
    remaining_steps = sum(m.step - (m.parent.step if m.parent else 0) for m in todo if m.recipe)
    seconds_per_step: dict[str, float] = {}
    for i, m in enumerate(todo, 1):
        start = time.perf_counter()
        steps = m.step - (m.parent.step if m.parent else 0)
        if m.recipe is None:
            copy_base(m, pathlib.Path(config.bases_from))
            what = f"copied from {config.bases_from}"
        else:
            train(m, root / "logs" / f"{m.size}-{m.directory.name}.log")
            what = f"{steps} steps"
            seconds_per_step[m.size] = (time.perf_counter() - start) / steps
        remaining_steps -= steps if m.recipe else 0
        left = remaining_steps * seconds_per_step.get(m.size, 0.0)
        log(
            f"  [{i}/{len(todo)}] {m.size} {m.name}: {what}, {time.perf_counter() - start:.0f} s"
            + (f" (about {left / 60:.1f} min of training left)" if left else "")
        )
