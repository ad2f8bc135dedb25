"""The search path: merge coefficients found by CMA-ES on a held-in score, no gradients.

CMA-ES (Hansen & Ostermeier 2001; Hansen 2016, "The CMA Evolution Strategy: A Tutorial",
arXiv:1604.00772) keeps a Gaussian N(m, σ² C) over the raw coefficients. Each
generation it samples λ candidates xₖ = m + σ yₖ, yₖ ~ N(0, C), scores them, moves m to
the weighted mean of the best μ, and adapts C (rank-one and rank-μ updates from the
evolution path and the selected steps) and σ (cumulative step-size adaptation). The
reference implementation, `cma` (Hansen et al.), does the maths; `search` drives it by
ask/tell, maximizing, seeded, and resumable generation by generation.

What is searched (Khalifa et al. 2024, "If You Can't Use Them, Recycle Them: Optimizing
Merging at Scale Mitigates Performance Tradeoffs", arXiv:2412.04144): the raw merge
coefficients r, float32[G·K], of a `CoefficientSpec` over a pool of K checkpoints (one
group, "task" granularity, in the paper: one weight per checkpoint). The fitness of r
(`merge_fitness`) is the merged model's score on held-in tasks,

    F(r) = Σ_t w_t s(θ(r), t) / ref_t / Σ_t w_t,   θ(r) = merge(c = f(r), θ₁ … θ_K, θ₀)

with s the task's primary metric, ref_t a reference score (normalized scores, as in the
paper) and w_t the task weights. The merge is the one `coefficients.merge` defines, so
the engine, given the found coefficients, writes the model that was scored.

    fitness = merge_fitness(spec, grouping, pool, evaluator)
    result = search(fitness, initial_raw(spec, G, K).ravel(), state_path=workdir / "cma.pkl")
    coefficients(spec, np.reshape(result["best_x"], (G, K)))
"""

import math
import os
import pathlib
import pickle
import warnings
from collections.abc import Callable, Mapping

import jax
import numpy as np

from jaxmerge.checkpoints.staging import is_primary
from jaxmerge.errors import InputError
from jaxmerge.evaluation import normalize
from jaxmerge.learning import coefficients as coefficients_lib
from jaxmerge.learning.pool import Pool
from jaxmerge.models import params as params_lib

with warnings.catch_warnings():  # cma warns that matplotlib (its plots) is missing
    warnings.simplefilter("ignore", UserWarning)
    import cma


class _Normal:
    """N(0, 1) samples for cma (its `randn` option) from a generator of our own: the
    search owns its random state (no global `np.random`), and pickles it with `es`."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


def _new_state(
    x0: np.ndarray, sigma0: float, popsize: int | None, seed: int, generations: int
) -> dict:
    options = {
        "seed": math.nan,  # cma seeds np.random otherwise; `randn` is ours
        "randn": _Normal(seed),
        "verbose": -9,
        "verb_log": 0,
        "signals_filename": "",  # no reading of ./cma_signals.in
        # Scores on a few hundred rows are discrete: a generation of equal fitnesses is
        # a plateau to cross, not convergence; cma's defaults stop at the first one (its
        # range of fitnesses is under tolfun). The caller's `generations` bounds the run.
        "tolflatfitness": max(generations, 1),
        "tolfun": 0.0,
        "tolfunhist": 0.0,
    }
    if popsize is not None:
        options["popsize"] = popsize
    es = cma.CMAEvolutionStrategy(x0, sigma0, options)
    return {"es": es, "history": [], "best": (None, -math.inf)}


def _load_state(state_path: pathlib.Path, setup: dict) -> dict:
    try:
        with state_path.open("rb") as f:
            state = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as e:
        raise InputError(f"{state_path}: unreadable search state ({e}); delete it") from None
    if state.get("setup") != setup:
        raise InputError(
            f"{state_path}: a search state of another setup ({state.get('setup')}, not "
            f"{setup}); delete it or choose another path"
        )
    return state


def _save_state(state_path: pathlib.Path, state: dict) -> None:
    if not is_primary():  # every process holds the same search; one writes it
        return
    tmp = state_path.with_name(state_path.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path)


def search(
    fitness: Callable[[np.ndarray], float],
    x0: np.ndarray,
    *,
    sigma0: float = 0.2,
    popsize: int | None = None,
    generations: int = 20,
    seed: int = 0,
    state_path: pathlib.Path | None = None,
    on_generation: Callable[[dict], None] | None = None,
) -> dict:
    """CMA-ES maximizing `fitness` over float vectors, from mean `x0` and step size `sigma0`.

    Args:
      fitness: float[N] -> float, higher is better; NaN counts as the worst.
      x0: float[N], the initial mean (e.g. `initial_raw(spec, G, K).ravel()`).
      sigma0: the initial step size σ, in x's units.
      popsize: λ, candidates per generation; default cma's 4 + ⌊3 ln N⌋ (6 for N = 1).
      generations: run until this many generations are done in all (fewer if cma's own
        termination criteria fire; generations of equal fitness do not stop it).
      seed: the same seed gives the same candidates, so the same history.
      state_path: if given, {es, history, best} is pickled there (atomically) after
        every generation, and a search finding the file continues from it: killed and
        re-run, it ends exactly where an uninterrupted one does. A state saved with
        another x0, sigma0, popsize or seed is refused; the fitness is not checked.
      on_generation: called with each new history record.

    Returns:
      {"best_x": list of N floats, "best_fitness": the best fitness seen, "history":
      [{"generation", "best", "mean", "sigma", "evaluations"}, ...] per generation, where
      best/mean are that generation's fitnesses and evaluations the running count}.

    cma needs N ≥ 2; for N = 1 the search runs in 2-D with a dummy second coordinate
    that the fitness never sees (so it drifts freely and changes nothing). Note that
    with the simplex space and one checkpoint the coefficient is 1 whatever r is.
    """
    x0 = np.asarray(x0, np.float64).ravel()
    if x0.size == 0 or not np.all(np.isfinite(x0)):
        raise InputError(f"search: x0 must be a non-empty finite vector, got {x0.tolist()}")
    if not sigma0 > 0 or generations < 0 or (popsize is not None and popsize < 2):
        raise InputError(
            f"search: need sigma0 > 0, generations >= 0 and popsize >= 2 (or None); got "
            f"sigma0={sigma0}, generations={generations}, popsize={popsize}"
        )
    n = x0.size
    start = np.append(x0, 0.0) if n == 1 else x0  # the 1-D case: a dummy coordinate
    setup = {"x0": x0.tolist(), "sigma0": sigma0, "popsize": popsize, "seed": seed}
    if state_path is not None and pathlib.Path(state_path).exists():
        state = _load_state(pathlib.Path(state_path), setup)
    else:
        state = {**_new_state(start, sigma0, popsize, seed, generations), "setup": setup}
    es, history = state["es"], state["history"]
    while len(history) < generations and not es.stop():
        candidates = es.ask()
        scores = [float(fitness(np.asarray(c[:n]))) for c in candidates]
        scores = [-math.inf if math.isnan(s) else s for s in scores]  # NaN: the worst
        es.tell(candidates, [-s for s in scores])  # cma minimizes
        best = int(np.argmax(scores))
        if scores[best] > state["best"][1]:
            state["best"] = (np.asarray(candidates[best][:n]).tolist(), scores[best])
        record = {
            "generation": len(history) + 1,
            "best": scores[best],
            "mean": float(np.mean(scores)),
            "sigma": float(es.sigma),
            "evaluations": int(es.countevals),
        }
        history.append(record)
        if state_path is not None:
            _save_state(pathlib.Path(state_path), state)
        if on_generation is not None:
            on_generation(record)
    best_x, best_fitness = state["best"]
    return {
        "best_x": x0.tolist() if best_x is None else best_x,
        "best_fitness": best_fitness,
        "history": list(history),
    }


class MergeFitness:
    """F(r) of the module docstring for one pool and evaluator; see `merge_fitness`.

    Attributes:
      num_traces: times the merge function was traced (1 once a candidate was scored).
    """

    def __init__(self, spec, grouping, pool: Pool, evaluator, weights, references, metric):
        self.spec, self.grouping, self.pool, self.evaluator = spec, grouping, pool, evaluator
        self.weights, self.references, self.metric = weights, references, metric
        self.shape = (len(grouping.names), len(pool.checkpoints))  # (G, K)
        self.num_traces = 0
        self._coefficients = jax.jit(self._coefficients_of)

    def _coefficients_of(self, raw):  # float32[G·K] -> float32[G, K]
        self.num_traces += 1
        return coefficients_lib.coefficients(self.spec, raw.reshape(self.shape))

    def merged(self, x: np.ndarray) -> dict:
        """The merged model of raw coefficients x (float[G·K]), on the pool's devices."""
        x = np.asarray(x, np.float32).ravel()
        if x.size != self.shape[0] * self.shape[1]:
            g, k = self.shape
            raise InputError(f"raw coefficients: {x.size} values, need G·K = {g}·{k} = {g * k}")
        coefs = self._coefficients(x)
        flat = coefficients_lib.merge_as_engine(
            self.spec, coefs, self.grouping, self.pool.checkpoints, self.pool.base
        )  # each tensor by the engine's kernel: the bits `jaxmerge merge` writes
        return params_lib.unflatten(flat)

    def scores(self, x: np.ndarray) -> dict[str, float]:
        """{task: primary metric / reference} of the merged model, the weighted tasks."""
        results = self.evaluator.evaluate(self.merged(x))
        try:
            raw = {t: normalize.primary_metric(t, results[t], self.metric) for t in self.weights}
        except ValueError as e:
            raise InputError(str(e)) from None
        return {t: s / self.references[t] if self.references else s for t, s in raw.items()}

    def __call__(self, x: np.ndarray) -> float:
        scores = self.scores(x)
        total = sum(self.weights.values())
        return sum(w * scores[t] for t, w in self.weights.items()) / total


def merge_fitness(
    spec: coefficients_lib.CoefficientSpec,
    grouping: coefficients_lib.Groups,
    pool: Pool,
    evaluator,
    *,
    tasks_weights: Mapping[str, float] | None = None,
    references: Mapping[str, float] | None = None,
    metric: str | None = None,
) -> MergeFitness:
    """fitness(r: float[G·K]) -> F(r), the weighted mean score of the merged model.

    Each tensor is merged by the merge engine's own jitted kernel (compiled once per dtype,
    the pool's arrays passed as arguments), so the model scored is the one the engine
    writes for the same coefficients, and the evaluator compiles once: no candidate
    recompiles anything.

    Args:
      spec, grouping: the coefficients (`coefficients.groups(spec, pool.names)`).
      pool: the K checkpoints (and base), ideally on the evaluator's mesh.
      evaluator: an `Evaluator` of the pool's model config.
      tasks_weights: {task: w_t ≥ 0} over the evaluator's tasks; tasks left out count 0;
        default: every task, equally.
      references: {task: ref_t ≠ 0} for every weighted task: scores are divided by them
        (normalized scores); default: raw scores.
      metric: the metric of every task (`normalize.primary_metric`); default "accuracy"
        or a task's only metric.
    """
    spec.check()
    known = list(evaluator.task_names)
    weights = dict(tasks_weights) if tasks_weights is not None else dict.fromkeys(known, 1.0)
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise InputError(f"task weights name {unknown}, not evaluated tasks (those: {known})")
    if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise InputError(f"task weights {weights} must be >= 0 with a positive sum")
    weights = {t: float(w) for t, w in weights.items() if w > 0}
    if references is not None:
        missing = sorted(t for t in weights if not references.get(t))
        if missing:
            raise InputError(f"references: no nonzero reference score for tasks {missing}")
        references = {t: float(references[t]) for t in weights}
    return MergeFitness(spec, grouping, pool, evaluator, weights, references, metric)
