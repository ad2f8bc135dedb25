"""Pre-training and fine-tuning of T5 1.1 on seqio tasks, as T5X does: `train(...)`.

`jaxmerge train` (jaxmerge/cli/train.py) configures `train` from gin, T5X style; gin files
import this module as `train_script` (`from jaxmerge import training as train_script`).

An optax loop (Adafactor by default, Shazeer & Stern 2018, arXiv:1804.04235, with
T5X's settings) over seqio's `EncDecFeatureConverter` (packed examples),
over a ("data", "model") mesh of every device (`sharding.Partitioner`, from gin:
gin_configs/mesh/): parameters and optimizer state are split over "model" by T5X's
logical-axis rules (replicated when num_partitions is 1, the default), the batch along
"data"; every process reads the same global batches and places its devices' rows, so
the same code runs on one CPU and on a pod, and gives the same training (up to the order
of the reductions) on 1 process or N.

Writes MODEL_DIR/checkpoint_<step>/ (T5X's format, through `jaxmerge.checkpoints`,
plus the optax state for resuming) every `save_period` steps and at the end,
`config.gin` (the gin config) and `operative_config.gin`, and TensorBoard
summaries under MODEL_DIR/train/. Re-running the same command after a kill
resumes from the last finished checkpoint. With `initial_checkpoint_path`
(runs/finetune.gin) it starts from that checkpoint's parameters and step, as
T5X, so TRAIN_STEPS counts the pre-training steps too; the optimizer state starts
fresh.
"""

import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxmerge import sharding as sharding_lib
from jaxmerge import summaries
from jaxmerge.checkpoints.staging import barrier, is_primary
from jaxmerge.errors import CheckpointError, InputError
from jaxmerge.models import params as param_utils
from jaxmerge.models import t5

# --- optimizer and learning-rate schedules (configured from gin) ------------------


def adafactor(learning_rate: optax.Schedule, decay_rate: float = 0.8, clipping_threshold=1.0):
    """Adafactor as T5X: factored second moments, no momentum, update clipping at 1,
    updates scaled by the parameter RMS (Shazeer & Stern 2018)."""
    return optax.adafactor(
        learning_rate,
        decay_rate=decay_rate,
        clipping_threshold=clipping_threshold,
        multiply_by_parameter_scale=True,
    )


def adamw(learning_rate: optax.Schedule, weight_decay: float = 0.0):
    """AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101), an alternative to Adafactor."""
    return optax.adamw(learning_rate, weight_decay=weight_decay)


def rsqrt_decay(base_learning_rate: float = 1.0, warmup_steps: int = 10000) -> optax.Schedule:
    """T5X's 'constant * rsqrt_decay': lr(step) = base / sqrt(max(step, warmup_steps))."""
    return lambda step: (
        base_learning_rate * jax.lax.rsqrt(jnp.maximum(step, warmup_steps).astype(jnp.float32))
    )


def constant(base_learning_rate: float = 0.001) -> optax.Schedule:
    """T5X's 'constant' schedule (fine-tuning)."""
    return optax.constant_schedule(base_learning_rate)


def linear_decay(
    base_learning_rate: float = 0.03,
    warmup_steps: int = 0,
    decay_steps: int = 1000,
    final_fraction: float = 0.1,
) -> optax.Schedule:
    """Linear warm-up, then linear decay to `final_fraction` of the base, then flat.

    With s the optimizer's step count (0 for the first update; it starts at 0 when
    fine-tuning from `initial_checkpoint_path`, whose optimizer state starts fresh),
    b = base_learning_rate, w = warmup_steps, d = decay_steps, f = final_fraction:

        lr(s) = b * (s + 1) / w                           for s < w
        lr(s) = b * (1 - (1 - f) * (s - w) / (d - w))     for w <= s < d
        lr(s) = b * f                                     for s >= d

    so d counts the warm-up too: set it to the number of steps of the run (TRAIN_STEPS
    minus the initial checkpoint's step when fine-tuning).
    """
    for name, value in (("warmup_steps", warmup_steps), ("decay_steps", decay_steps)):
        if not isinstance(value, int | np.integer):  # e.g. gin's REQUIRED: DECAY_STEPS unset
            raise InputError(
                f"linear_decay: {name} is unset or not a whole number of steps ({value!r}); "
                "the recipes take decay_steps from DECAY_STEPS: pass --gin.DECAY_STEPS=N, "
                "the run's length"
            )
    if not 0 <= warmup_steps < decay_steps:
        raise InputError(
            f"linear_decay: need 0 <= warmup_steps ({warmup_steps}) < decay_steps ({decay_steps})"
        )
    if not 0 <= final_fraction <= 1:
        raise InputError(f"linear_decay: final_fraction={final_fraction} must be in [0, 1]")

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = (s + 1) / max(warmup_steps, 1)
        frac = jnp.clip((s - warmup_steps) / (decay_steps - warmup_steps), 0.0, 1.0)
        decay = 1.0 - (1.0 - final_fraction) * frac
        return base_learning_rate * jnp.where(s < warmup_steps, warm, decay)

    return schedule


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which data to train on; names as T5X's `utils.DatasetConfig`."""

    mixture_or_task_name: str
    task_feature_lengths: dict
    batch_size: int = 32  # global, over all processes
    split: str = "train"
    shuffle: bool = True
    seed: int = 0
    pack: bool = True


# --- checkpoints ------------------------------------------------------------------


OPTIMIZER_STATE_FILE = "jaxmerge_optimizer_state.msgpack"


def save_checkpoint(model_dir, step: int, params, opt_state) -> pathlib.Path:
    """Writes MODEL_DIR/checkpoint_<step>/ in T5X's format and returns its path.

    The parameters (and the step) go through `jaxmerge.checkpoints`' T5X writer, so
    T5X restores the directory with `RestoreCheckpointConfig(mode='specific')`; the
    optax state, for resuming, is one extra file (OPTIMIZER_STATE_FILE, Flax msgpack)
    that T5X ignores. Everything is staged in MODEL_DIR/.checkpoint_<step>.staging/
    and renamed into place last, so a kill never leaves a finished-looking directory.
    """
    import flax.serialization

    from jaxmerge import checkpoints

    model_dir = pathlib.Path(model_dir).absolute()
    flat = param_utils.flatten(params)
    infos = {n: checkpoints.ParamInfo(a.shape, a.dtype) for n, a in flat.items()}
    staging = model_dir / f".checkpoint_{step}.staging"
    writer = checkpoints.create(staging, "t5x", infos, step=step, overwrite=True)
    for name, array in flat.items():
        writer.write(name, array)
    opt_bytes = flax.serialization.to_bytes(opt_state)  # every process: a collective fetch
    written = writer.finalize({OPTIMIZER_STATE_FILE: opt_bytes})
    final = model_dir / f"checkpoint_{step}"
    if is_primary():  # several processes: one renames, the others wait
        (staging / OPTIMIZER_STATE_FILE).rename(written / OPTIMIZER_STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        written.rename(final)
        shutil.rmtree(staging)
    barrier(f"saved:{final}")
    return final


def restore_checkpoint(path, sharding=None, abstract_opt_state=None, opt_sharding=None):
    """Reads a checkpoint -> (params (nested dict), step, opt_state or None).

    `path` is anything `jaxmerge.checkpoints.open` reads (T5X, Orbax, or a Hugging
    Face T5 directory, whose names are mapped by `models.hf_t5`). Arrays are placed
    with `sharding` if given: one sharding for all, or {"/"-joined name: sharding}. The
    optimizer state comes back only when `abstract_opt_state` is given and the
    checkpoint has OPTIMIZER_STATE_FILE, placed with `opt_sharding` (a tree or one
    sharding; default `sharding` when that is one sharding).
    """
    import flax.serialization

    from jaxmerge import checkpoints
    from jaxmerge.models import hf_t5

    path = pathlib.Path(path).absolute()

    def where(name):
        return sharding.get(name) if isinstance(sharding, dict) else sharding

    with checkpoints.open(path) as reader:
        if reader.format == "safetensors":
            _, flat = hf_t5.load_hf_t5(path)
            flat = {n: jax.device_put(a, where(n)) for n, a in flat.items()}
        else:
            flat = {n: reader.read(n, where(n)) for n in reader.params}
        step = int(reader.step or 0)
    opt_state = None
    opt_file = pathlib.Path(reader.path) / OPTIMIZER_STATE_FILE
    if abstract_opt_state is not None and opt_file.exists():
        opt_state = flax.serialization.from_bytes(abstract_opt_state, opt_file.read_bytes())
        if opt_sharding is None and not isinstance(sharding, dict):
            opt_sharding = sharding
        opt_state = jax.device_put(opt_state, opt_sharding)
    return param_utils.unflatten(flat), step, opt_state


def latest_checkpoint(model_dir) -> pathlib.Path | None:
    """The finished MODEL_DIR/checkpoint_<step> with the largest step, or None."""
    model_dir = pathlib.Path(model_dir)
    steps = [
        int(m.group(1))
        for p in (model_dir.iterdir() if model_dir.is_dir() else [])
        if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and p.is_dir()
    ]
    return model_dir / f"checkpoint_{max(steps)}" if steps else None


# --- the train step -----------------------------------------------------------------


def loss_fn(config: t5.T5Config, params, batch, dropout_rng, z_loss: float = 1e-4):
    """Token-mean cross-entropy plus T5X's z-loss z_loss·(log Z)² on loss-weighted tokens."""
    logits = t5.Transformer(config).apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        batch.get("encoder_segment_ids"),
        batch.get("decoder_segment_ids"),
        enable_dropout=config.dropout_rate > 0,
        rngs={"dropout": dropout_rng},
    )  # (batch, targets_len, vocab)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, batch["decoder_target_tokens"][..., None], -1)[
        ..., 0
    ]
    per_token = log_z - target_logit + z_loss * jnp.square(log_z)
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_train_step(
    config: t5.T5Config,
    optimizer: optax.GradientTransformation,
    z_loss=1e-4,
    state_shardings=None,
):
    """(params, opt_state, batch, rng, step) -> (params, opt_state, loss); donates state.

    `state_shardings` (params', opt_state's, loss's) pins where the outputs live.
    """

    @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=state_shardings)
    def train_step(params, opt_state, batch, rng, step):
        dropout_rng = jax.random.fold_in(rng, step)
        loss, grads = jax.value_and_grad(functools.partial(loss_fn, config, z_loss=z_loss))(
            params, batch, dropout_rng
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


# --- data ----------------------------------------------------------------------------


def make_dataset(cfg: DatasetConfig, seed: int):
    """An endless iterator of this process's share of each global batch (numpy dicts)."""
    return map(process_rows, global_batches(cfg, seed))


def global_batches(cfg: DatasetConfig, seed: int):
    """An endless iterator of whole global batches (numpy dicts of `batch_size` rows).

    Every process reads the same global stream and keeps its rows (`process_rows`), so the
    global batches, and so the run, do not depend on how many processes there are
    (seqio.ShardInfo, T5X's way, gives each process other examples, and other batches for
    every N). The price is that each process reads and packs all of the data: nothing next
    to a step for the generated tasks, worth revisiting for a large corpus on many hosts.
    """
    import seqio

    from jaxmerge import tasks

    tasks.register()
    if cfg.batch_size % jax.device_count():
        raise InputError(
            f"DatasetConfig.batch_size={cfg.batch_size}: must be a multiple of the "
            f"{jax.device_count()} devices"
        )
    try:
        ds = seqio.get_dataset(
            cfg.mixture_or_task_name,
            task_feature_lengths=dict(cfg.task_feature_lengths),
            feature_converter=seqio.EncDecFeatureConverter(pack=cfg.pack),
            dataset_split=cfg.split,
            shuffle=cfg.shuffle,
            num_epochs=None,
            seed=seed,
            verbose=False,
        )
    except ValueError as e:
        raise InputError(f"MIXTURE_OR_TASK_NAME={cfg.mixture_or_task_name!r}: {e}") from e
    return ds.batch(cfg.batch_size, drop_remainder=True).as_numpy_iterator()


def process_rows(batch: dict) -> dict:
    """Rows [i·B/N, (i+1)·B/N) of a global batch of B rows: process i of N's share."""
    rows = len(next(iter(batch.values()))) // jax.process_count()
    first = jax.process_index() * rows
    return {k: v[first : first + rows] for k, v in batch.items()}


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding: encoder inputs plus decoder targets with a loss weight."""
    return int(np.sum(batch["encoder_input_tokens"] > 0) + np.sum(batch["decoder_loss_weights"]))


# --- the loop ------------------------------------------------------------------------


def train(
    *,
    model: t5.T5Config,
    model_dir: str,
    train_dataset_cfg: DatasetConfig,
    total_steps: int,
    optimizer=adafactor,
    learning_rate_fn: optax.Schedule | None = None,  # default rsqrt_decay()
    initial_checkpoint_path: str | None = None,
    save_period: int = 1000,
    log_period: int = 50,
    random_seed: int = 0,
    z_loss: float = 1e-4,
    partitioner: sharding_lib.Partitioner | None = None,
) -> dict:
    """Trains `model` until step `total_steps`; returns the last logged metrics."""
    model_dir = pathlib.Path(model_dir)
    partitioner = partitioner or sharding_lib.Partitioner()
    mesh = partitioner.mesh()
    replicated, data = (
        NamedSharding(mesh, PartitionSpec()),
        NamedSharding(mesh, PartitionSpec("data")),
    )
    learning_rate_fn = learning_rate_fn or rsqrt_decay()
    tx = optimizer(learning_rate_fn)

    def init_state():
        params = param_utils.unbox(t5.init_params(model, jax.random.key(random_seed)))
        return params, tx.init(params)

    abstract_params, abstract_opt = jax.eval_shape(init_state)
    flat_shardings = partitioner.param_shardings(mesh, param_utils.flatten(abstract_params))
    param_shardings = param_utils.unflatten(flat_shardings)
    opt_shardings = optax.tree_utils.tree_map_params(
        tx,
        # A state leaf shaped like its parameter goes where it goes; factored ones replicate.
        lambda leaf, where, param: where if leaf.shape == param.shape else replicated,
        abstract_opt,
        param_shardings,
        abstract_params,
        transform_non_params=lambda _: replicated,
    )
    init = jax.jit(init_state, out_shardings=(param_shardings, opt_shardings))

    if is_primary():
        for stale in model_dir.glob(".checkpoint_*.staging*"):  # from a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
    barrier(f"cleaned:{model_dir}")
    if (last := latest_checkpoint(model_dir)) is not None:
        params, step, opt_state = restore_checkpoint(
            last, flat_shardings, abstract_opt, opt_shardings
        )
        _check_params(params, abstract_params, last)
        if opt_state is None:
            raise CheckpointError(f"{last}: no {OPTIMIZER_STATE_FILE}; cannot resume from it")
        print(f"resuming from {last} (step {step})")
    elif initial_checkpoint_path:
        params, step, _ = restore_checkpoint(initial_checkpoint_path, flat_shardings)
        _check_params(params, abstract_params, initial_checkpoint_path)
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
        print(f"initialised from {initial_checkpoint_path} (step {step})")
    else:
        (params, opt_state), step = init(), 0

    n_params = sum(x.size for x in jax.tree.leaves(abstract_params))
    devices = jax.device_count()
    mesh_text = " x ".join(f"{n} {a}" for a, n in mesh.shape.items())
    print(
        f"model: {n_params:,} parameters; {devices} devices ({mesh_text}); "
        f"step {step} -> {total_steps}"
    )
    train_step = make_train_step(
        model, tx, z_loss, state_shardings=(param_shardings, opt_shardings, replicated)
    )
    batches = global_batches(train_dataset_cfg, seed=train_dataset_cfg.seed + step)
    writer = summaries.scalar_writer(model_dir / "train")
    rng, metrics = jax.random.key(random_seed + 1), {}
    tokens, t0, first = 0, time.perf_counter(), step
    totals = _read_train_stats(model_dir, step)
    totals_t0 = time.perf_counter()
    while step < total_steps:
        whole = next(batches)  # every process has it; each places its devices' rows
        batch = {
            k: jax.make_array_from_callback(v.shape, data, lambda index, v=v: v[index])
            for k, v in whole.items()
        }
        params, opt_state, loss = train_step(params, opt_state, batch, rng, step)
        step += 1
        new_tokens = real_tokens(whole)
        tokens += new_tokens
        totals["tokens"] += new_tokens
        if step % log_period == 0 or step == total_steps:
            loss = float(loss)  # waits for the step
            elapsed = time.perf_counter() - t0
            metrics = {
                "loss": loss,
                "tokens_per_s": tokens / elapsed,
                "learning_rate": float(learning_rate_fn(_schedule_count(opt_state, step) - 1)),
            }
            print(
                f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True
            )
            writer(step, metrics)
            tokens, t0 = 0, time.perf_counter()
        if step % save_period == 0 or step == total_steps:
            print(f"saved {save_checkpoint(model_dir, step, params, opt_state)}", flush=True)
            now = time.perf_counter()
            totals["seconds"] += now - totals_t0
            totals_t0, totals["step"] = now, step
            _write_train_stats(model_dir, totals)
    if step == first:
        print(f"nothing to do: already at step {step} >= TRAIN_STEPS={total_steps}")
    return metrics


TRAIN_STATS_FILE = "train_stats.json"


def _read_train_stats(model_dir: pathlib.Path, step: int) -> dict:
    """This run's totals so far, {"step", "tokens", "seconds"}, from TRAIN_STATS_FILE.

    tokens: real (non-padding) input and target tokens trained on in this model
    directory; seconds: wall time of the training loop (restores, data and steps up
    to the last checkpoint, not the start-up). Kept at each checkpoint, so a resumed
    run adds to the totals of its checkpoint; a fine-tuning run counts from its
    initial checkpoint's step.
    """
    try:
        stats = json.loads((model_dir / TRAIN_STATS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        stats = {}
    if stats.get("step") != step:
        stats = {"step": step, "tokens": 0, "seconds": 0.0, "start_step": step}
    return stats


def _write_train_stats(model_dir: pathlib.Path, stats: dict) -> None:
    tmp = model_dir / f".{TRAIN_STATS_FILE}.tmp"
    if is_primary():
        tmp.write_text(json.dumps(stats, indent=1) + "\n")
        os.replace(tmp, model_dir / TRAIN_STATS_FILE)


def _schedule_count(opt_state, step: int) -> int:
    """The step count the optimizer's schedule sees: steps since its state started (a
    fine-tuning run's optimizer starts fresh at the initial checkpoint's step)."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    for leaf in jax.tree.leaves(opt_state, is_leaf=is_schedule):
        if is_schedule(leaf):
            return int(leaf.count)
    return step


def _check_params(params, abstract, path) -> None:
    got = {k: v.shape for k, v in param_utils.flatten(params).items()}
    want = {k: v.shape for k, v in param_utils.flatten(abstract).items()}
    for name in sorted(set(got) | set(want)):
        if got.get(name) != want.get(name):
            raise CheckpointError(
                f"{path}: parameter {name}: checkpoint has shape {got.get(name)}, "
                f"the model wants {want.get(name)}"
            )
