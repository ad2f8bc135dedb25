"""`Evaluator`: seqio's metrics for many parameter trees, with data and compilation paid once.

Built once per (model config, tasks, split, lengths, batch size, mesh); then
`evaluate(params)` scores any parameter tree of the config's shapes (a merge under
optimization calls it thousands of times):

    ev = Evaluator(config, "jaxmerge_held_in", batch_size=32)
    ev.evaluate(params)  # {"jaxmerge_topic_news": {"accuracy": 41.0}, ...}

The metrics are seqio's (`seqio.Evaluator`), so any registered Task works with its own
metric functions: predict metrics get greedy decodes (`decoding.greedy_decode`, KV cache,
up to the targets length), score metrics get Σ log p(targets | inputs) per example
(`decoding.score_batch`). The constructor converts each task's examples with
`seqio.EncDecFeatureConverter(pack=False)` and stores them as fixed-shape numpy batches
(the last one padded with all-zero rows, whose outputs are dropped) placed on the mesh,
so each `evaluate` reuses them and the jitted functions compile once per input
signature (batch shape, parameter shapes/dtypes/shardings), never again for a new tree.

Several processes (`jax.distributed`): every process builds the same data, the mesh
spans every process's devices, each batch is split over all of them, and the outputs come
back replicated, so every process computes the same metrics (only process 0 should write
them: `jaxmerge.evaluation.run` does so).
"""

import dataclasses
import difflib
import functools
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
import seqio
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmerge import tasks
from jaxmerge.errors import InputError
from jaxmerge.models import decoding, t5
from jaxmerge.models import params as params_lib

MODEL_FEATURES = (  # what EncDecFeatureConverter(pack=False) gives; each (rows, length)
    "encoder_input_tokens",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of one `evaluate` call.

    model_s: in the model, from dispatching a task's first batch until its last output
    is ready (blocking), summed over tasks; includes compilation on a first call.
    total_s: the whole call's wall time (data lookup, seqio's decoding, postprocessing
    and metrics included).
    """

    model_s: float
    total_s: float

    @property
    def outside_model_share(self) -> float:
        """Fraction of wall time spent outside the model."""
        return 1.0 - self.model_s / self.total_s if self.total_s > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class _Batches:
    """One task's model features, ready on the mesh."""

    indices: np.ndarray  # (n,) seqio's example indices, in dataset order
    batches: tuple[dict[str, jax.Array], ...]  # each {feature: (batch_size, length)}
    num_examples: int  # n real rows; the last batch's rows past n are padding


# Batches are cut to the task's longest example, rounded up to this many tokens: few
# distinct shapes (so few compilations), and no work on columns that are padding in every
# row. Padding is masked everywhere (attention, loss weights), so the numbers are the same
# up to float rounding; greedy decoding still runs up to the configured targets length.
LENGTH_QUANTUM = 16


def _fit_lengths(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Encoder and decoder features cut to the longest row's nonzero length (quantized)."""

    def longest(array: np.ndarray) -> int:
        used = np.flatnonzero(np.any(array != 0, axis=0))
        length = int(used[-1]) + 1 if used.size else 1
        return min(array.shape[1], -(-length // LENGTH_QUANTUM) * LENGTH_QUANTUM)

    encoder = longest(features["encoder_input_tokens"])
    decoder = longest(features["decoder_target_tokens"])
    return {k: v[:, : encoder if k.startswith("encoder") else decoder] for k, v in features.items()}


def _check_name(name: str) -> None:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else "none is close"
    raise InputError(f"unknown seqio task or mixture {name!r} ({len(known)} registered; {hint})")


def _check_split(name: str, split: str) -> None:
    subtasks = seqio.get_subtasks(seqio.get_mixture_or_task(name))
    for task in subtasks:
        if split not in task.splits:
            raise InputError(
                f"task {task.name!r} (in {name!r}) has no split {split!r}; "
                f"its splits: {', '.join(task.splits)}"
            )
    if not any(t.metric_fns or t.metric_objs for t in subtasks):
        raise InputError(f"{name!r}: none of its tasks has a metric function to evaluate")


def default_mesh() -> Mesh:
    """A 1-D mesh over all devices (every process's), axis "data"."""
    return Mesh(np.array(jax.devices()), ("data",))


class Evaluator:
    """seqio evaluation of parameter trees of one model config (see the module docstring).

    Args:
      model_config: the model; every evaluated tree must have its parameter shapes.
      mixture_or_task_name: registered seqio Task/Mixture name(s); the built-in tasks are
        registered first (`jaxmerge.tasks.register()`). Tasks without metrics are skipped.
      split: the split of every task.
      task_feature_lengths: {"inputs": in_len, "targets": out_len}, default 256 / 64;
        longer examples are truncated; out_len is also the maximum decode length.
      batch_size: rows per model call; a multiple of the mesh's "data" size.
      mesh: batches are sharded over its "data" axis; default: all devices.
      max_examples: at most this many rows from the start of each task (seqio's
        `num_examples`; for rank classification a row is one (question, choice), so the
        last question may keep only some of its choices).
      log_dir: if given, seqio's JSONLogger appends each task's metrics there per call.

    Attributes:
      num_data_builds: times the data pipeline was built (1).
      num_compilations: executables compiled for the predict/score functions so far.
      last_timing: `Timing` of the latest `evaluate` call.
    """

    def __init__(
        self,
        model_config: t5.T5Config,
        mixture_or_task_name: str | Sequence[str],
        *,
        split: str = "validation",
        task_feature_lengths: Mapping[str, int] | None = None,
        batch_size: int = 32,
        mesh: Mesh | None = None,
        max_examples: int | None = None,
        log_dir: str | None = None,
    ):
        lengths = dict(task_feature_lengths or {"inputs": 256, "targets": 64})
        if sorted(lengths) != ["inputs", "targets"] or min(lengths.values()) < 1:
            raise InputError(
                f"task_feature_lengths {lengths} must give positive 'inputs' and 'targets'"
            )
        if max_examples is not None and max_examples < 1:
            raise InputError(f"max_examples {max_examples} must be at least 1 (or None: all)")
        names = [mixture_or_task_name] if isinstance(mixture_or_task_name, str) else []
        names = list(dict.fromkeys(names or mixture_or_task_name))  # unique, in order
        if not names:
            raise InputError("Evaluator: no task or mixture name given")
        self.mesh = default_mesh() if mesh is None else mesh
        if "data" not in self.mesh.shape:
            raise InputError(f"mesh axes {tuple(self.mesh.shape)} have no 'data' axis")
        data_size = self.mesh.shape["data"]
        if batch_size < 1 or batch_size % data_size:
            raise InputError(
                f"batch_size {batch_size} must be a positive multiple of the mesh's "
                f"'data' axis size {data_size}"
            )
        tasks.register()
        for name in names:
            _check_name(name)
            _check_split(name, split)
        self.model_config, self.split, self.batch_size = model_config, split, batch_size
        self.task_feature_lengths = lengths
        self._data_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        boxed = jax.eval_shape(lambda: t5.init_params(model_config, jax.random.key(0)))
        self._expected = params_lib.flatten(params_lib.unbox(boxed))  # name -> ShapeDtypeStruct
        self.num_data_builds = 0
        self._build_data(names, max_examples, log_dir)
        self._num_traces = 0
        # Several processes: outputs replicated, so np.asarray reads them on every process
        # (a small all-gather); one process reads its sharded outputs as before.
        outputs = self._replicated if jax.process_count() > 1 else None
        self._predict = jax.jit(self._predict_tokens, out_shardings=outputs)
        self._score = jax.jit(self._score_rows, out_shardings=outputs)
        self.last_timing: Timing | None = None
        self._progress: Callable[[int], None] | None = None

    # --- data, built once -----------------------------------------------------------
    def _build_data(self, names: list[str], max_examples: int | None, log_dir: str | None):
        """One seqio.Evaluator per name; every task's model features as device batches."""
        loggers = (functools.partial(seqio.JSONLogger, write_n_results=0),) if log_dir else ()
        self._seqio = [
            seqio.Evaluator(
                name,
                feature_converter=seqio.EncDecFeatureConverter(pack=False),
                eval_split=self.split,
                sequence_length=self.task_feature_lengths,
                num_examples=max_examples,
                logger_cls=loggers,
                log_dir=log_dir,
                async_compute_metrics=False,  # evaluate() waits for the metrics anyway
            )
            for name in names
        ]
        self._task_of_dataset: dict[int, str] = {}  # id(seqio's model dataset) -> task
        self._data: dict[str, _Batches] = {}
        for ev in self._seqio:
            for task_name, ds in ev.cached_model_datasets.items():
                self._task_of_dataset[id(ds)] = task_name  # ev keeps ds alive
                if task_name not in self._data:
                    self._data[task_name] = self._materialize(task_name, ds)
        self.num_data_builds += 1

    def _materialize(self, task_name: str, dataset) -> _Batches:
        rows = list(dataset.as_numpy_iterator())  # [(index, {feature: (length,)})]
        if not rows:
            raise InputError(f"task {task_name!r} has no examples in split {self.split!r}")
        n, bs = len(rows), self.batch_size
        pad = -n % bs
        features = {
            k: np.pad(np.stack([ex[k] for _, ex in rows]), ((0, pad), (0, 0)))  # (n+pad, len)
            for k in MODEL_FEATURES
        }
        features = _fit_lengths(features)
        batches = tuple(
            jax.device_put({k: v[s : s + bs] for k, v in features.items()}, self._data_sharding)
            for s in range(0, n + pad, bs)
        )
        return _Batches(np.array([i for i, _ in rows]), batches, n)

    @property
    def task_names(self) -> list[str]:
        """The evaluated tasks, in order."""
        return list(self._data)

    @property
    def num_examples(self) -> dict[str, int]:
        """{task: rows evaluated} (padding rows not counted)."""
        return {name: d.num_examples for name, d in self._data.items()}

    # --- the model, jitted once per input signature ---------------------------------
    def _predict_tokens(self, params, encoder_input_tokens):  # (b, in_len) -> (b, out_len)
        self._num_traces += 1
        return decoding.greedy_decode(
            self.model_config, params, encoder_input_tokens, self.task_feature_lengths["targets"]
        )

    def _score_rows(self, params, batch):  # {feature: (b, len)} -> (b,) Σ log p(targets)
        self._num_traces += 1
        return decoding.score_batch(self.model_config, params, batch)

    @property
    def num_compilations(self) -> int:
        """Executables in the predict and score functions' jit caches.

        One per input signature (shapes, dtypes and shardings); `_cache_size` is jax's
        private count. Falls back to the number of traces if it is unavailable.
        """
        try:
            return self._predict._cache_size() + self._score._cache_size()
        except AttributeError:
            return self._num_traces

    def _run(self, params, dataset, kind: str):
        """[(seqio index, output)] for the task of `dataset` (seqio's cached model dataset).

        kind "predict": token ids (out_len,) per example, the greedy output with EOS (1)
        where it was emitted and 0 after it (seqio's vocabulary.decode stops at the first
        EOS and drops padding). kind "score": one float per example, Σ log p(targets).
        """
        task_name = self._task_of_dataset[id(dataset)]
        if (kind, task_name) not in self._outputs:  # a task in two mixtures runs once a call
            data = self._data[task_name]
            start = time.perf_counter()
            if kind == "predict":
                outs = [self._predict(params, b["encoder_input_tokens"]) for b in data.batches]
            else:
                outs = [self._score(params, b) for b in data.batches]
            jax.block_until_ready(outs)
            self._model_s += time.perf_counter() - start
            if self._progress is not None:
                self._progress(data.num_examples)
            out = np.concatenate([np.asarray(o) for o in outs])[: data.num_examples]
            values = list(out) if kind == "predict" else [float(x) for x in out]
            self._outputs[kind, task_name] = list(zip(data.indices.tolist(), values, strict=True))
        return self._outputs[kind, task_name]

    def _predict_fn(self, params, dataset, model_feature_shapes=None):
        return self._run(params, dataset, "predict")

    def _score_fn(self, params, dataset, model_feature_shapes=None):
        return self._run(params, dataset, "score")

    # --- evaluation -----------------------------------------------------------------
    def _checked(self, params) -> dict:
        """`params` unboxed, after checking it has exactly the config's parameter shapes."""
        if not isinstance(params, Mapping):
            raise InputError(f"params must be a nested dict of arrays, not {type(params).__name__}")
        params = params_lib.unbox(params)
        try:
            flat = params_lib.flatten(params)
        except ValueError as e:
            raise InputError(f"params: {e}") from e
        missing = sorted(self._expected.keys() - flat.keys())
        if missing:
            want = self._expected[missing[0]].shape
            raise InputError(
                f"params lack {len(missing)} parameter(s) of the model config, e.g. "
                f"{missing[0]!r} of shape {want}"
            )
        extra = sorted(flat.keys() - self._expected.keys())
        if extra:
            raise InputError(
                f"params have {len(extra)} parameter(s) the model config does not, e.g. "
                f"{extra[0]!r} of shape {tuple(np.shape(flat[extra[0]]))}"
            )
        for name, want in self._expected.items():
            got = tuple(np.shape(flat[name]))
            if got != want.shape:
                raise InputError(
                    f"parameter {name!r} has shape {got}; the model config expects {want.shape}"
                )
        return params

    def _placed(self, params):
        """Arrays already on the mesh's devices keep their sharding; the rest is replicated."""
        devices = set(self.mesh.devices.flat)

        def put(x):
            if isinstance(x, jax.Array) and x.sharding.device_set == devices:
                return x
            return jax.device_put(x, self._replicated)

        return jax.tree.map(put, params)

    def evaluate(
        self, params, *, step: int | None = None, progress: Callable[[int], None] | None = None
    ) -> dict[str, dict[str, float]]:
        """{task: {metric: value}} of one parameter tree; `step` is only for the loggers;
        `progress(n)` is called with each task's number of examples once the model is done
        with them.

        Numeric metric values become floats; other seqio metric values pass through.
        """
        start = time.perf_counter()
        params = self._placed(self._checked(params))
        self._model_s, self._outputs, self._progress = 0.0, {}, progress
        metrics: dict[str, dict] = {}
        try:
            for ev in self._seqio:
                future, _ = ev.evaluate(
                    compute_metrics=True,
                    step=step,
                    predict_fn=functools.partial(self._predict_fn, params),
                    score_fn=functools.partial(self._score_fn, params),
                )
                metrics.update(future.result())
        finally:
            self._outputs = {}
        self.last_timing = Timing(self._model_s, time.perf_counter() - start)
        return {task: {k: _as_float(v) for k, v in m.items()} for task, m in metrics.items()}


def _as_float(value):
    if isinstance(value, seqio.metrics.Scalar):
        value = value.value
    if isinstance(value, (int, float, np.number)) or (
        isinstance(value, np.ndarray | jax.Array) and value.ndim == 0
    ):
        return float(value)
    return value
