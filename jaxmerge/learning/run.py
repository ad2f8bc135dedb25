"""`learn(LearnConfig(...))`: coefficients learned over a pool, the merge written to disk.

    config ─► pool (base + K checkpoints, in memory on the mesh) ─► groups, r₀
           ─► gradient path: optax steps on the objective, fitness every eval_period
              (early stopping on it), state saved for a resume
              search path: CMA-ES over r, each candidate merged on the devices and scored
              by the one Evaluator, state saved every generation
           ─► OUT/merged/ written by the merge engine with the best coefficients (the
              bytes the fitness scored), OUT/coefficients.json, OUT/tensorboard/

The fitness is the weighted mean, over the validation tasks, of each task's primary
metric (accuracy by default), divided by a reference score per task when `references`
are given (the paper's normalized scores: an expert's score held-in); higher is better.
"""

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from jaxmerge.checkpoints.staging import barrier, is_primary
from jaxmerge.errors import InputError
from jaxmerge.learning import coefficients as coef_lib
from jaxmerge.learning.coefficients import CoefficientSpec

SEARCHES = ("gradient", "cmaes")


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """One learning run, as `jaxmerge learn` flags or gin (`learn_script.LearnConfig.*`)."""

    experts: Sequence[str]  # the K checkpoints (experts, or a pool of generalists)
    tasks: Sequence[str]  # validation tasks: the objective's data and the fitness
    output: str
    base: str | None = None  # θ₀ (needed by the task_vector space)
    search: str = "gradient"
    objective: str = "supervised"  # gradient path: supervised | entropy
    coefficients: CoefficientSpec = CoefficientSpec()
    optimizer: Callable | None = None  # lr -> optax transformation; default optax.adam
    learning_rate: float = 1e-3
    steps: int = 100
    eval_period: int = 20
    patience: int | None = None  # evaluations without improvement before stopping
    generations: int = 20  # CMA-ES
    popsize: int | None = None
    sigma: float = 0.2
    tasks_weights: Mapping[str, float] | None = None
    references: Mapping[str, float] | None = None  # task -> score dividing it
    metric: str | None = None
    split: str = "validation"
    batch_size: int = 16
    max_examples: int | None = None
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 256, "targets": 64}
    )
    seed: int = 0
    preprocess: str = "none"  # none | ties | dare: task vectors preprocessed (AdaMerging++)
    density: float = 0.2  # ties preprocessing: the kept fraction of each |τᵢ|
    drop_rate: float = 0.9  # dare preprocessing: the dropped fraction
    # Devices holding one copy of the pool and the merged model (a "model" mesh axis,
    # T5X's logical-axis rules); 1: every device holds all of it.
    num_partitions: int = 1
    overwrite: bool = False


def _check(config: LearnConfig) -> None:
    if config.search not in SEARCHES:
        raise InputError(f"--search={config.search!r}: choose from {', '.join(SEARCHES)}")
    from jaxmerge.learning import gradient

    if config.objective not in gradient.OBJECTIVES:
        choices = ", ".join(gradient.OBJECTIVES)
        raise InputError(f"--objective={config.objective!r}: choose from {choices}")
    config.coefficients.check()
    if config.coefficients.space == "task_vector" and not config.base:
        raise InputError("--base: the task_vector space needs a base (τᵢ = θᵢ − θ₀)")
    from jaxmerge.learning.pool import check_preprocess

    check_preprocess(config.preprocess, config.density, config.drop_rate)  # before loading
    if config.preprocess != "none" and not config.base:
        raise InputError(f"--preprocess={config.preprocess}: needs --base (τᵢ = θᵢ − θ₀)")
    for name in ("steps", "generations", "batch_size", "eval_period"):
        if getattr(config, name) < 1:
            raise InputError(f"--{name}={getattr(config, name)}: must be at least 1")


def _task_names(config: LearnConfig) -> list[str]:
    from jaxmerge.evaluation import run as eval_run

    names = list(dict.fromkeys(t for name in config.tasks for t in eval_run.leaf_tasks(name)))
    for task in config.tasks_weights or {}:
        if task not in names:
            raise InputError(f"--task_weight {task}: not among the tasks ({', '.join(names)})")
    return names


def _mixture(task_names: Sequence[str]) -> str:
    """A seqio Mixture of the tasks, equal rates, registered once under a content name."""
    import seqio

    name = "jaxmerge_learn_" + hashlib.sha256(",".join(task_names).encode()).hexdigest()[:12]
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [(t, 1.0) for t in task_names])
    return name


def learn(config: LearnConfig, *, log: Callable[[str], None] = print) -> dict:
    """Learns the coefficients and writes OUT (see the module docstring); returns the
    summary written to OUT/coefficients.json."""
    import optax

    from jaxmerge import summaries, tasks
    from jaxmerge.evaluation import run as eval_run
    from jaxmerge.evaluation.evaluator import Evaluator
    from jaxmerge.learning import gradient, search
    from jaxmerge.learning.pool import load_pool, preprocess
    from jaxmerge.merging import MergeConfig, merge_checkpoints
    from jaxmerge.models import params as params_lib
    from jaxmerge.models import t5
    from jaxmerge.sharding import Partitioner

    start = time.perf_counter()
    _check(config)
    tasks.register()
    task_names = _task_names(config)
    output = pathlib.Path(config.output).absolute()
    summary_file = output / "coefficients.json"
    if summary_file.exists() and not config.overwrite:
        if (done := _finished(summary_file, config)) is not None:
            log(f"already learned: {output} holds this run (same inputs and settings)")
            return done
        raise InputError(f"{output}: holds another finished run (--overwrite replaces it)")
    spec = config.coefficients
    model_config = eval_run.model_config(config.experts[0])
    partitioner = Partitioner(num_partitions=config.num_partitions)
    mesh = partitioner.mesh()
    evaluator = Evaluator(
        model_config,
        task_names,
        split=config.split,
        task_feature_lengths=dict(config.task_feature_lengths),
        batch_size=config.batch_size,
        max_examples=config.max_examples,
        mesh=mesh,
    )
    base_path = config.base if spec.space == "task_vector" else None
    pool_base = config.base if config.preprocess != "none" else base_path
    placement = None
    if config.num_partitions > 1:  # the pool split over the "model" axis
        abstract = jax.eval_shape(lambda: t5.init_params(model_config, jax.random.key(0)))
        flat = params_lib.flatten(params_lib.unbox(abstract))
        placement = partitioner.param_shardings(mesh, flat)
    pool = load_pool(pool_base, list(config.experts), mesh, placement)
    pool = preprocess(
        pool,
        config.preprocess,
        density=config.density,
        drop_rate=config.drop_rate,
        seed=config.seed,
    )
    if base_path is None:  # simplex: Σᵢ wᵢ (θ₀ + τ̃ᵢ), the base is inside each checkpoint
        pool = dataclasses.replace(pool, base=None)
    grouping = coef_lib.groups(spec, pool.names)
    raw0 = coef_lib.initial_raw(spec, len(grouping.names), len(pool.checkpoints))
    fitness = search.merge_fitness(
        spec,
        grouping,
        pool,
        evaluator,
        tasks_weights=config.tasks_weights,
        references=config.references,
        metric=config.metric,
    )
    state_dir = output / "state"
    _resume_only_this_run(state_dir, config)
    writer = summaries.scalar_writer(output / "tensorboard")
    log(
        f"learning {raw0.size} coefficients ({len(grouping.names)} group(s) x "
        f"{len(pool.checkpoints)} checkpoints, {spec.space}) by {config.search} on "
        f"{len(task_names)} task(s)"
    )

    if config.search == "gradient":
        from jaxmerge import training

        make_tx = config.optimizer or optax.adam
        tx = make_tx(config.learning_rate)
        step, _ = gradient.make_step(spec, grouping, model_config, tx, config.objective)
        mixture = _mixture(task_names)

        def batches(from_step: int):
            dataset = training.DatasetConfig(
                mixture,
                dict(config.task_feature_lengths),
                config.batch_size,
                split=config.split,
                seed=config.seed,
                pack=False,
            )
            # Whole batches on every process: the same input everywhere (replicated).
            return training.global_batches(dataset, seed=config.seed + from_step)

        result = gradient.fit(
            step,
            raw0,
            tx,
            pool,
            batches,
            steps=config.steps,
            fitness=fitness,
            eval_period=config.eval_period,
            patience=config.patience,
            save_period=config.eval_period,
            state_dir=state_dir,
            log=log,
            on_step=lambda at, metrics: writer(at, metrics),
        )
        best_raw, history = result["raw"], result["history"]
    else:
        found = search.search(
            lambda x: fitness(x),
            raw0.ravel(),
            sigma0=config.sigma,
            popsize=config.popsize,
            generations=config.generations,
            seed=config.seed,
            state_path=state_dir / "cmaes.pkl",
            on_generation=lambda g: log(
                f"generation {g['generation']}: best {g['best']:.4g}, mean {g['mean']:.4g}"
            ),
        )
        best_raw = np.asarray(found["best_x"], np.float32).reshape(raw0.shape)
        history = found["history"]
    for entry in history:
        if "fitness" in entry:
            writer(entry["step"], {"fitness": entry["fitness"]})
        elif "best" in entry:
            writer(
                entry["generation"], {"fitness/best": entry["best"], "fitness/mean": entry["mean"]}
            )

    coefs = np.asarray(coef_lib.coefficients(spec, best_raw))
    best_fitness = fitness(best_raw)  # the merge written below, scored once more
    merged_dir = output / "merged"
    merged_from = tuple(config.experts)
    if config.preprocess != "none":  # the merge reads what was scored: θ₀ + τ̃ᵢ
        merged_from = _write_pool(pool, output / "preprocessed")
    merge_checkpoints(
        MergeConfig(
            method=coef_lib.METHOD_OF_SPACE[spec.space],
            base=base_path,
            experts=merged_from,
            output=str(merged_dir),
            weight_rules=coef_lib.weight_rules(spec, coefs, grouping),
            overwrite=True,
        ),
        quiet=True,
        log=log,
    )
    summary = {
        "coefficients": {g: coefs[i].tolist() for i, g in enumerate(grouping.names)},
        "checkpoints": list(config.experts),
        "merged_from": list(merged_from),
        "base": base_path,
        "fitness": best_fitness,
        "history": history,
        "search": config.search,
        "objective": config.objective if config.search == "gradient" else None,
        "space": spec.space,
        "granularity": spec.granularity,
        "tasks": task_names,
        "merged": str(next(iter(sorted(merged_dir.glob("checkpoint_*"))), merged_dir)),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "config": _json_config(config),
    }
    if is_primary():  # several processes found the same coefficients
        tmp = summary_file.with_name(".coefficients.json.tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(summary_file)  # last: a run without it is unfinished and resumes
        shutil.rmtree(state_dir, ignore_errors=True)
    barrier(f"learned:{output}")
    return summary


def _finished(summary_file: pathlib.Path, config: LearnConfig) -> dict | None:
    """The summary in OUT if it is a finished run of this very config, else None."""
    try:
        saved = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        return None
    mine = _json_config(dataclasses.replace(config, overwrite=False))
    theirs = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(theirs, dict) or {**theirs, "overwrite": False} != mine:
        return None
    return saved


def _write_pool(pool, directory: pathlib.Path) -> tuple[str, ...]:
    """Writes the pool's checkpoints as T5X directories DIR/checkpoint_i/checkpoint_0."""
    from jaxmerge import checkpoints

    paths = []
    for i, tree in enumerate(pool.checkpoints):
        infos = {n: checkpoints.ParamInfo(a.shape, a.dtype) for n, a in tree.items()}
        writer = checkpoints.create(directory / f"checkpoint_{i}", "t5x", infos, overwrite=True)
        for name in pool.names:
            writer.write(name, np.asarray(tree[name]))
        paths.append(str(writer.finalize()))
    return tuple(paths)


def _resume_only_this_run(state_dir: pathlib.Path, config: LearnConfig) -> None:
    """Keeps a killed run's state for a resume only if it is this very run's."""
    mine = json.dumps(_json_config(dataclasses.replace(config, overwrite=False)), sort_keys=True)
    record = state_dir / "run.json"
    if is_primary():
        if state_dir.exists() and (not record.exists() or record.read_text() != mine):
            shutil.rmtree(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(mine)
    barrier(f"state:{state_dir}")


def _json_config(config: LearnConfig) -> dict:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    fields["coefficients"] = dataclasses.asdict(config.coefficients)
    fields["optimizer"] = None if config.optimizer is None else repr(config.optimizer)
    return json.loads(json.dumps(fields, default=str))
