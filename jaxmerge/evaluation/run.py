"""`evaluate_checkpoints(EvalConfig(...))`: checkpoints on disk -> metrics, normalized scores.

    config ─► tasks resolved (a user's module imported first) ─► every checkpoint's
              fingerprint ─► cached scores, or: restore it onto the mesh ─► the one
              `Evaluator` (built on first need, reused by every checkpoint)
           ─► normalized scores (held-in ÷ the category's expert, held-out ÷ the base)
           ─► OUT/metrics.json, metrics.csv, tensorboard/, config.gin (staged, renamed last)

Which model a score is divided by: `experts` maps a held-in category (a built-in name
such as "sentiment", or any task or mixture name) to the checkpoint of its expert, whose
tasks are then held-in; with a `base`, every other task is held-out (built-in held-out
tasks are averaged by their category, a user's task is a category of its own), except
built-in held-in tasks whose expert is not given, which are reported raw. The base, the
experts and the `multitask` baseline are scored like every checkpoint and reported in the
same units.
"""

import csv
import dataclasses
import difflib
import hashlib
import importlib
import io
import json
import math
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

from jaxmerge.checkpoints.staging import barrier, is_primary
from jaxmerge.errors import InputError
from jaxmerge.evaluation import normalize, references, vocab
from jaxmerge.evaluation.normalize import HELD_IN, HELD_OUT, TaskRole

DEFAULT_CACHE = pathlib.Path("~/.cache/jaxmerge/eval").expanduser()
TMP_SUFFIX = ".jaxmerge-tmp"
BASE, MULTITASK = "base", "multitask"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation, as `jaxmerge eval` flags or gin (`eval_script.EvalConfig.<field>`)."""

    checkpoints: Sequence[str]
    tasks: Sequence[str]  # seqio Task or Mixture names
    output_dir: str
    model: object | None = None  # a T5Config; None: from config.json or the shapes
    module: str | None = None  # a user's module of seqio registrations, imported first
    split: str = "test"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 256, "targets": 64}
    )
    batch_size: int = 32
    max_examples: int | None = None  # per task
    base: str | None = None
    experts: Mapping[str, str] = dataclasses.field(default_factory=dict)  # category -> path
    multitask: str | None = None
    metric: str | None = None  # the metric normalized (default "accuracy", or the only one)
    cache_dir: str | None = str(DEFAULT_CACHE)  # None: no score cache
    overwrite: bool = False


@dataclasses.dataclass
class Model:
    """One checkpoint to score: its `label` in the tables and its `role`."""

    label: str
    path: str
    role: str  # "checkpoint", "base", "expert", "multitask"
    fingerprint: str = ""
    step: int | None = None
    metrics: dict = dataclasses.field(default_factory=dict)  # task -> {metric: value}
    cached: bool = False
    seconds: float = 0.0


# --- tasks ---------------------------------------------------------------------------


def import_module(name: str | None) -> None:
    """Imports a user's module of seqio registrations (T5X's MIXTURE_OR_TASK_MODULE)."""
    if not name:
        return
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's code is bad input
        raise InputError(f"--module {name}: import failed: {type(e).__name__}: {e}") from e


def leaf_tasks(name: str) -> list[str]:
    """A Task's name, or a Mixture's tasks' names; InputError naming the closest names."""
    import seqio

    if name in seqio.TaskRegistry.names():
        return [name]
    if name in seqio.MixtureRegistry.names():
        return [t.name for t in seqio.get_mixture_or_task(name).tasks]
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"--tasks: no seqio Task or Mixture named {name!r}{hint}")


def _builtin_categories() -> tuple[dict[str, str], dict[str, str]]:
    from jaxmerge.tasks import held_in, held_out

    def by_task(categories):
        return {f"jaxmerge_{d}": c for c, datasets in categories.items() for d in datasets}

    return by_task(held_in.CATEGORIES), by_task(held_out.CATEGORIES)


def expert_tasks(category: str) -> list[str]:
    """The tasks an expert for `category` is the reference of: a built-in held-in category
    means `jaxmerge_held_in_<category>`, anything else is a Task or Mixture name."""
    from jaxmerge.tasks import held_in

    name = f"jaxmerge_held_in_{category}" if category in held_in.CATEGORIES else category
    try:
        return leaf_tasks(name)
    except InputError:
        raise InputError(
            f"--expert {category}=...: neither a held-in category "
            f"({', '.join(held_in.CATEGORIES)}) nor a seqio Task or Mixture"
        ) from None


def task_roles(tasks: Sequence[str], experts: Mapping[str, str], has_base: bool) -> dict:
    """task -> TaskRole for the tasks that can be normalized (see the module docstring)."""
    builtin_in, builtin_out = _builtin_categories()
    roles = {}
    for category in experts:
        for task in expert_tasks(category):
            if task in roles:
                raise InputError(
                    f"--expert {category}=...: task {task} already has the expert of "
                    f"{roles[task].category}"
                )
            roles[task] = TaskRole(HELD_IN, category, f"expert:{category}")
    if has_base:
        for task in tasks:
            if task not in roles and task not in builtin_in:
                roles[task] = TaskRole(HELD_OUT, builtin_out.get(task, task), BASE)
    return {t: roles[t] for t in tasks if t in roles}


# --- models --------------------------------------------------------------------------


def _label(path: str) -> str:
    """A checkpoint's name in tables: its directory, with the run's for T5X's checkpoint_<N>."""
    path = pathlib.Path(path)
    if re.fullmatch(r"checkpoint_\d+", path.name) and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name or str(path)


def _models(config: EvalConfig) -> list[Model]:
    models, labels = [], set()
    for path in config.checkpoints:
        label = _label(path)
        if label in labels or label in (BASE, MULTITASK) or label.startswith("expert:"):
            label = f"{label}#{len(models)}"
        labels.add(label)
        models.append(Model(label, str(path), "checkpoint"))
    if config.base:
        models.append(Model(BASE, str(config.base), "base"))
    for category, path in config.experts.items():
        models.append(Model(f"expert:{category}", str(path), "expert"))
    if config.multitask:
        models.append(Model(MULTITASK, str(config.multitask), "multitask"))
    for model in models:
        if not pathlib.Path(model.path).exists():
            raise InputError(f"{model.path}: checkpoint not found ({model.role})")
    return models


def model_config(path: str, model=None):
    """The T5Config to evaluate `path` with: `model` if given, else a Hugging Face
    directory's config.json, else the one the checkpoint's shapes describe."""
    from jaxmerge import checkpoints
    from jaxmerge.models import hf_t5, t5

    if model is not None:
        return dataclasses.replace(model, dropout_rate=0.0)
    hf_config = pathlib.Path(path) / "config.json"
    with checkpoints.open(path) as reader:
        if reader.format == "safetensors" and hf_config.exists():
            hf = json.loads(hf_config.read_text())
            return dataclasses.replace(hf_t5.config_from_hf(hf), dropout_rate=0.0)
        shapes = {name: info.shape for name, info in reader.params.items()}
    try:
        return t5.config_from_shapes(shapes)
    except ValueError as e:
        raise InputError(f"{path}: cannot infer the model config ({e}); give a model gin") from e


# --- the run -------------------------------------------------------------------------


@dataclasses.dataclass
class EvalResults:
    output_dir: pathlib.Path
    models: list[Model]
    roles: dict[str, TaskRole]
    normalized: dict[str, dict]  # label -> normalize.normalized_scores(...)
    reused: bool = False  # the output existed for this very run


def evaluate_checkpoints(
    config: EvalConfig,
    *,
    extra_files: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> EvalResults:
    """Scores every checkpoint on every task and writes OUT (see the module docstring).

    `extra_files` (e.g. the operative config.gin) are written into OUT too; `progress(label,
    examples_done, examples_total)` is called as batches finish.
    """
    from jaxmerge import tasks as builtin_tasks

    builtin_tasks.register()
    import_module(config.module)
    if config.batch_size <= 0:
        raise InputError(f"--batch_size={config.batch_size}: must be positive")
    task_names = list(dict.fromkeys(t for name in config.tasks for t in leaf_tasks(name)))
    if not task_names:
        raise InputError("--tasks: no task given")
    models = _models(config)
    roles = task_roles(task_names, config.experts, config.base is not None)
    output = pathlib.Path(config.output_dir).absolute()

    cache_dir = pathlib.Path(config.cache_dir).expanduser() if config.cache_dir else None
    for model in models:
        model.fingerprint = references.fingerprint(model.path, cache_dir)
    key = run_key(config, models, task_names)
    if (done := _finished(output, key)) is not None:
        log(f"already evaluated: {output} holds this evaluation (same checkpoints and settings)")
        return done
    if output.exists() and not config.overwrite:
        raise InputError(
            f"{output}: output exists from another evaluation (--overwrite replaces it)"
        )

    evaluators: dict = {}  # (model config, vocabulary) -> Evaluator, built on first need
    for model in models:
        _score(config, model, task_names, evaluators, cache_dir, log, progress)

    scores = {m.label: _primary(config, m) for m in models}
    reference_scores = {m.label: scores[m.label] for m in models if m.role != "checkpoint"}
    normalized = {
        m.label: normalize.normalized_scores(scores[m.label], roles, reference_scores)
        for m in models
    }
    results = EvalResults(output, models, roles, normalized)
    if is_primary():  # several processes computed the same numbers
        _write(results, task_names, config, key, extra_files or {})
    barrier(f"evaluated:{output}")
    return results


def _score(config, model: Model, task_names, evaluators, cache_dir, log, progress) -> None:
    """model.metrics from the cache, or by evaluating it (and caching what it gives)."""
    from jaxmerge.evaluation.evaluator import Evaluator

    start = time.perf_counter()
    model_cfg = model_config(model.path, config.model)
    spm = vocab.sentencepiece_model(model.path)
    settings = {
        "tasks": task_names,
        "split": config.split,
        "task_feature_lengths": dict(config.task_feature_lengths),
        "max_examples": config.max_examples,
        "model": dataclasses.asdict(model_cfg),
        "vocabulary": references.fingerprint(spm) if spm else "tasks'",
    }
    cache = references.ScoreCache(cache_dir, settings)
    if (cached := cache.get(model.fingerprint)) is not None:
        model.metrics, model.cached = cached, True
        log(f"{model.label}: scores from the cache ({model.path})")
        return
    names = vocab.with_vocabulary(task_names, spm) if spm else task_names
    key = (model_cfg, str(spm))
    if key not in evaluators:
        evaluators[key] = Evaluator(
            model_cfg,
            names,
            split=config.split,
            task_feature_lengths=dict(config.task_feature_lengths),
            batch_size=config.batch_size,
            max_examples=config.max_examples,
        )
    evaluator = evaluators[key]
    params, model.step = _restore(model.path, evaluator)
    total, done = sum(evaluator.num_examples.values()), 0

    def advance(examples: int) -> None:
        nonlocal done
        done += examples
        progress(model.label, done, total)

    try:
        metrics = evaluator.evaluate(params, step=model.step, progress=progress and advance)
    except InputError as e:  # the tree does not fit the model config: name the file
        raise InputError(f"{model.path}: {e}") from None
    model.metrics = {task: metrics[name] for task, name in zip(task_names, names, strict=True)}
    model.seconds = time.perf_counter() - start
    if is_primary():
        cache.put(model.fingerprint, model.metrics)
    examples = sum(evaluator.num_examples.values())
    rate = f", {examples / model.seconds:.1f} examples/s" if model.seconds else ""
    log(f"{model.label}: evaluated on {len(task_names)} tasks in {model.seconds:.1f}s{rate}")


def _restore(path: str, evaluator):
    """The checkpoint's parameters, replicated on the evaluator's mesh, and its step."""
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxmerge import training

    replicated = NamedSharding(evaluator.mesh, PartitionSpec())
    params, step, _ = training.restore_checkpoint(path, replicated)
    return params, step


def _primary(config: EvalConfig, model: Model) -> dict[str, float]:
    try:
        return {
            task: normalize.primary_metric(task, metrics, config.metric)
            for task, metrics in model.metrics.items()
        }
    except ValueError as e:
        raise InputError(f"--metric: {e}") from None


# --- output --------------------------------------------------------------------------


def run_key(config: EvalConfig, models: Sequence[Model], task_names: Sequence[str]) -> str:
    """What decides the numbers: the checkpoints' content and every setting but the output."""
    fields = (
        dataclasses.asdict(config)
        if config.model is None
        else {
            **dataclasses.asdict(dataclasses.replace(config, model=None)),
            "model": dataclasses.asdict(config.model),
        }
    )
    for ignored in ("output_dir", "overwrite", "cache_dir", "checkpoints", "base", "experts"):
        fields.pop(ignored)
    fields["models"] = [(m.label, m.role, m.fingerprint) for m in models]
    fields["task_names"] = list(task_names)
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _finished(output: pathlib.Path, key: str) -> EvalResults | None:
    """The results in OUT if OUT is a finished evaluation with this run key."""
    try:
        saved = json.loads((output / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if saved.get("run_key") != key:
        return None
    models = [Model(**m) for m in saved["models"]]
    roles = {t: TaskRole(**r) for t, r in saved["roles"].items()}
    return EvalResults(output, models, roles, saved["normalized"], reused=True)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _write(results: EvalResults, task_names, config: EvalConfig, key: str, extra) -> None:
    """Stages OUT in a sibling, then renames it into place: nothing half-written is OUT."""
    output = results.output_dir
    staging = output.with_name(output.name + TMP_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    summary = {
        "run_key": key,
        "split": config.split,
        "tasks": list(task_names),
        "models": [dataclasses.asdict(m) for m in results.models],
        "roles": {t: dataclasses.asdict(r) for t, r in results.roles.items()},
        "normalized": _json_safe(results.normalized),
    }
    (staging / "metrics.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (staging / "metrics.csv").write_text(_csv(results, task_names, config.metric))
    for name, text in extra.items():
        (staging / name).write_text(text)
    _tensorboard(staging / "tensorboard", results)
    if output.exists():
        shutil.rmtree(output)  # --overwrite: checked before anything was evaluated
    staging.rename(output)


def _csv(results: EvalResults, task_names, metric) -> str:
    """One row per (model, task, metric): raw value, and the normalized primary metric."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["model", "path", "role", "task", "kind", "category", "metric", "value", "normalized"]
    )
    for model in results.models:
        norm = results.normalized[model.label]["tasks"]
        for task in task_names:
            role = results.roles.get(task)
            metrics = model.metrics[task]
            primary = metric or ("accuracy" if "accuracy" in metrics else next(iter(metrics)))
            for name, value in metrics.items():
                n = norm.get(task) if name == primary else None
                writer.writerow(
                    [
                        model.label,
                        model.path,
                        model.role,
                        task,
                        role.kind if role else "",
                        role.category if role else "",
                        name,
                        value,
                        "" if n is None or math.isnan(n) else n,
                    ]
                )
    return out.getvalue()


def _tensorboard(logdir: pathlib.Path, results: EvalResults) -> None:
    from jaxmerge import summaries

    for model in results.models:
        scalars = {
            f"{task}/{name}": float(value)
            for task, metrics in model.metrics.items()
            for name, value in metrics.items()
        }
        for kind in (HELD_IN, HELD_OUT):
            value = results.normalized[model.label][kind]
            if value is not None and not math.isnan(value):
                scalars[f"normalized/{kind}"] = value
        summaries.scalar_writer(logdir / re.sub(r"[:/]", "_", model.label))(
            model.step or 0, scalars
        )
