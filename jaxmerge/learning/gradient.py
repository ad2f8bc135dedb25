"""The gradient path: optax over the merge coefficients (AdaMerging, arXiv:2310.02575).

Each step forms the merged model on the devices from the base, the K checkpoints and the
coefficients c = f(r) (`coefficients.merge`, the merge methods' own code), runs the
objective on one batch, and updates only r (float32[G, K]) with any optax transformation:

    supervised   token-mean cross-entropy of the targets (held-in validation data)
    entropy      H(p(y₁ | x)) = −Σ_v p(v) log p(v), the entropy of the first target token,
                 on inputs alone (AdaMerging's unsupervised objective, for seq2seq)

Nothing is rebuilt on the host per step, and no per-step copy of the model is kept: the
pool is passed to one jitted step as arguments, and r and the optimizer state are donated.
`fit` adds early stopping on a fitness evaluated every `eval_period` steps, and saves r,
the optimizer state and the history every `save_period` steps, so a killed run resumes.
"""

import functools
import json
import os
import pathlib
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmerge.checkpoints.staging import is_primary
from jaxmerge.learning import coefficients as coef_lib
from jaxmerge.models import params as params_lib
from jaxmerge.models import t5

OBJECTIVES = ("supervised", "entropy")


def supervised_loss(model_config: t5.T5Config, params, batch) -> jax.Array:
    """Token-mean cross-entropy of batch's targets (training's loss, without z-loss)."""
    from jaxmerge import training

    return training.loss_fn(model_config, params, batch, jax.random.key(0), z_loss=0.0)


def entropy_loss(model_config: t5.T5Config, params, batch) -> jax.Array:
    """Mean over the batch of the entropy of the first target token's distribution."""
    tokens = batch["encoder_input_tokens"]
    start = jnp.zeros((tokens.shape[0], 1), jnp.int32)
    logits = t5.Transformer(model_config).apply(
        {"params": params}, tokens, start, jnp.ones_like(start)
    )[:, 0]  # (batch, vocab)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


LOSSES = {"supervised": supervised_loss, "entropy": entropy_loss}


def merged_params(spec, grouping, raw, checkpoints, base) -> dict:
    """The nested parameter tree that raw coefficients define."""
    coefs = coef_lib.coefficients(spec, raw)
    return params_lib.unflatten(coef_lib.merge(spec, coefs, grouping, checkpoints, base))


def make_step(spec, grouping, model_config, tx: optax.GradientTransformation, objective: str):
    """(raw, opt_state, checkpoints, base, batch) -> (raw, opt_state, loss), jitted once."""
    loss_fn = LOSSES[objective]

    # Rematerialized: the backward pass recomputes θᵢ − θ₀ instead of keeping K task
    # vectors as residuals (K model sizes); dL/dc = Σ dL/dθ · τᵢ then fuses into one pass.
    merge = jax.checkpoint(functools.partial(merged_params, spec, grouping))

    def loss_of(raw, checkpoints, base, batch):
        return loss_fn(model_config, merge(raw, checkpoints, base), batch)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(raw, opt_state, checkpoints, base, batch):
        loss, grad = jax.value_and_grad(loss_of)(raw, checkpoints, base, batch)
        updates, opt_state = tx.update(grad, opt_state, raw)
        return optax.apply_updates(raw, updates), opt_state, loss

    return step, jax.jit(loss_of)


def _save(path: pathlib.Path, state: dict) -> None:
    """r, the optimizer state (Flax msgpack) and the history, written atomically."""
    import flax.serialization

    path.mkdir(parents=True, exist_ok=True)
    blob = flax.serialization.to_bytes({"raw": state["raw"], "opt_state": state["opt_state"]})
    meta = {k: v for k, v in state.items() if k not in ("raw", "opt_state")}
    for name, data in (("state.msgpack", blob), ("state.json", json.dumps(meta).encode())):
        tmp = path / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path / name)


def _load(path: pathlib.Path, raw, opt_state) -> dict | None:
    import flax.serialization

    if not (path / "state.json").exists():
        return None
    meta = json.loads((path / "state.json").read_text())
    if meta.get("step_of_blob") != meta.get("step"):
        return None  # killed between the two files: start over rather than mix them
    tensors = flax.serialization.from_bytes(
        {"raw": raw, "opt_state": opt_state}, (path / "state.msgpack").read_bytes()
    )
    return {**meta, **tensors}


def fit(
    step: Callable,
    raw: np.ndarray,
    tx: optax.GradientTransformation,
    pool,
    batches: Callable[[int], Iterator[dict]],
    *,
    steps: int,
    fitness: Callable[[jax.Array], float] | None = None,
    eval_period: int = 20,
    patience: int | None = None,
    save_period: int = 20,
    state_dir: pathlib.Path | None = None,
    log: Callable[[str], None] = print,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Runs `steps` optimizer steps (resuming from `state_dir`), evaluates `fitness(raw)`
    every `eval_period` steps and at the end, stops after `patience` evaluations without
    improvement; returns {"raw": the best r, "best_fitness", "history", "steps_done"}.

    `batches(start_step)` yields the training batches from that step on (reproducible).
    """
    raw = jnp.asarray(raw, jnp.float32)
    opt_state = tx.init(raw)
    state = {"step": 0, "history": [], "best_fitness": None, "best_raw": None, "stale": 0}
    if state_dir is not None and (saved := _load(state_dir, raw, opt_state)) is not None:
        state.update(saved)
        raw, opt_state = jnp.asarray(saved["raw"]), saved["opt_state"]
        log(f"resuming from {state_dir} at step {state['step']}")
    data = batches(state["step"])

    def evaluate(at: int) -> bool:
        """Records the fitness at step `at`; True when early stopping says stop."""
        value = float(fitness(raw))
        state["history"].append({"step": at, "fitness": value})
        if state["best_fitness"] is None or value > state["best_fitness"]:
            state.update(best_fitness=value, best_raw=np.asarray(raw).tolist(), stale=0)
        else:
            state["stale"] += 1
        log(f"step {at}: fitness {value:.4g} (best {state['best_fitness']:.4g})")
        return patience is not None and state["stale"] >= patience

    def save() -> None:
        if state_dir is not None and is_primary():
            _save(state_dir, {**state, "raw": raw, "opt_state": opt_state,
                              "step_of_blob": state["step"]})  # fmt: skip

    stopped = False
    while state["step"] < steps and not stopped:
        raw, opt_state, loss = step(raw, opt_state, pool.checkpoints, pool.base, next(data))
        state["step"] += 1
        at = state["step"]
        if on_step is not None:
            on_step(at, {"loss": float(loss)})
        if fitness is not None and (at % eval_period == 0 or at == steps):
            stopped = evaluate(at)
        elif fitness is None:
            state["history"].append({"step": at, "loss": float(loss)})
        if at % save_period == 0 or at == steps or stopped:
            save()
    best = state["best_raw"] if state["best_raw"] is not None else np.asarray(raw).tolist()
    return {
        "raw": np.asarray(best, np.float32),
        "best_fitness": state["best_fitness"],
        "history": state["history"],
        "steps_done": state["step"],
        "stopped_early": stopped,
    }
