"""Greedy decoding (with or without a KV cache) and log-likelihood scoring.

Both are pure functions of (params, batch), jitted; they run batched over a device
mesh when the caller places the batch with a `NamedSharding` over its data axis
(jit propagates the sharding). Conventions as T5X's `EncoderDecoderModel`: the
decoder input is the target shifted right with 0 (pad) as the start token; EOS
is 1; padding is 0.
"""

import functools

import jax
import jax.numpy as jnp

from jaxmerge.models.t5 import T5Config, Transformer

Array = jax.Array


def shift_right(targets: Array) -> Array:
    """(batch, len) -> (batch, len): [0, t0, t1, ...], the teacher-forced decoder input."""
    return jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]


@functools.partial(jax.jit, static_argnames=("config",))
def score_batch(config: T5Config, params, batch: dict[str, Array]) -> Array:
    """Σₜ log p(yₜ | y<ₜ, x) per example, shape (batch,), as T5X's `score_batch`.

    batch: encoder_input_tokens (b, in_len), decoder_target_tokens (b, out_len),
    optional decoder_input_tokens (else shift_right of the targets) and
    decoder_loss_weights (else targets > 0).
    """
    targets = batch["decoder_target_tokens"]
    dec_in = batch.get("decoder_input_tokens")
    dec_in = shift_right(targets) if dec_in is None else dec_in
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    logits = Transformer(config).apply(
        {"params": params}, batch["encoder_input_tokens"], dec_in, targets
    )  # (b, out_len, vocab)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token_logp * weights, axis=-1)


def _finish(tokens: Array, next_token: Array, done: Array, i: Array, eos_id: int):
    next_token = jnp.where(done, 0, next_token)  # after EOS, pad
    tokens = tokens.at[:, i].set(next_token)
    return tokens, done | (next_token == eos_id)


@functools.partial(jax.jit, static_argnames=("config", "max_decode_length", "eos_id"))
def greedy_decode(
    config: T5Config, params, encoder_input_tokens: Array, max_decode_length: int, eos_id: int = 1
) -> Array:
    """argmax decoding with a KV cache: (batch, in_len) -> (batch, max_decode_length).

    The encoder runs once; each step feeds one token to the decoder, whose
    self-attention keys/values are appended to the cache. Stops when every
    sequence has produced EOS; positions after EOS are 0.
    """
    model = Transformer(config)
    batch = encoder_input_tokens.shape[0]
    variables = {"params": params}
    encoded = model.apply(variables, encoder_input_tokens, method=Transformer.encode)
    step_kw = dict(decode=True, max_decode_length=max_decode_length, method=Transformer.decode)
    full = jnp.zeros((batch, max_decode_length), jnp.int32)
    cache_shapes = jax.eval_shape(
        lambda: model.apply(
            variables, encoded, encoder_input_tokens, full, full, mutable=["cache"], **step_kw
        )[1]["cache"]
    )
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)

    def body(state):
        i, cache, tokens, last, done = state
        logits, new_vars = model.apply(
            {"params": params, "cache": cache},
            encoded,
            encoder_input_tokens,
            last[:, None],
            last[:, None],
            mutable=["cache"],
            **step_kw,
        )  # logits (batch, 1, vocab)
        next_token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        tokens, done = _finish(tokens, next_token, done, i, eos_id)
        return i + 1, new_vars["cache"], tokens, next_token, done

    def cond(state):
        i, _, _, _, done = state
        return (i < max_decode_length) & ~jnp.all(done)

    start = jnp.zeros((batch,), jnp.int32)
    state = (jnp.array(0), cache, full, start, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(cond, body, state)[2]


@functools.partial(jax.jit, static_argnames=("config", "max_decode_length", "eos_id"))
def greedy_decode_uncached(
    config: T5Config, params, encoder_input_tokens: Array, max_decode_length: int, eos_id: int = 1
) -> Array:
    """Reference for `greedy_decode`: reruns the whole decoder at every step (O(L²))."""
    model = Transformer(config)
    batch = encoder_input_tokens.shape[0]
    encoded = model.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
    ones = jnp.ones((batch, max_decode_length), jnp.int32)

    def body(i, state):
        tokens, done = state
        logits = model.apply(
            {"params": params},
            encoded,
            encoder_input_tokens,
            shift_right(tokens),
            ones,
            method=Transformer.decode,
        )  # (batch, max_len, vocab)
        next_token = jnp.argmax(logits[:, i], axis=-1).astype(jnp.int32)
        return _finish(tokens, next_token, done, i, eos_id)

    init = (jnp.zeros((batch, max_decode_length), jnp.int32), jnp.zeros((batch,), bool))
    return jax.lax.fori_loop(0, max_decode_length, body, init)[0]
