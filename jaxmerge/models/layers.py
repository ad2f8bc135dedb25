"""Building blocks of the T5 1.1 Transformer, with T5X's parameter names and shapes.

T5 1.1 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", arXiv:1910.10683; 1.1 changes per Shazeer 2020,
"GLU Variants Improve Transformer", arXiv:2002.05202): RMS norm without bias or
mean subtraction, no biases in dense layers, gated-GELU MLP, relative position
biases shared by all layers of a stack, unscaled attention logits (the 1/sqrt(d)
factor is folded into the query initialisation).

Every parameter carries logical axis names (T5X's: 'vocab', 'embed', 'joined_kv',
'mlp', 'heads', 'relpos_buckets') via `nn.with_logical_partitioning`; sharding
rules map them to mesh axes outside the model. Dense kernels are stored 2-D
(flattened input dims, flattened output dims) exactly as T5X's `DenseGeneral`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
_fan_in_normal = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_fan_in_truncated = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _param(module: nn.Module, name: str, init, shape, axes: tuple[str, ...]) -> Array:
    """A float32 parameter annotated with its logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Dense(nn.Module):
    """y = x W over the last `len(in_shape)` axes of x; W stored (prod(in), prod(out))."""

    features: tuple[int, ...]
    kernel_axes: tuple[str, str]
    n_in_axes: int = 1
    kernel_init: nn.initializers.Initializer = _fan_in_truncated
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[-self.n_in_axes :]
        w = _param(
            self,
            "kernel",
            self.kernel_init,
            (int(np.prod(in_shape)), int(np.prod(self.features))),
            self.kernel_axes,
        )
        w = jnp.asarray(w, self.dtype).reshape(in_shape + tuple(self.features))
        x = jnp.asarray(x, self.dtype)
        contract = tuple(range(x.ndim - self.n_in_axes, x.ndim))
        return jax.lax.dot_general(x, w, ((contract, tuple(range(self.n_in_axes))), ((), ())))


class RMSNorm(nn.Module):
    """T5 layer norm: y = x / sqrt(mean(x²) + ε) · scale; no mean, no bias."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = jnp.asarray(x, jnp.float32)
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return jnp.asarray(y * scale, self.dtype)


class Embed(nn.Module):
    """Token embedding table (vocab, embed); `attend` gives tied output logits."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = _param(
            self,
            "embedding",
            nn.initializers.normal(stddev=1.0),
            (self.num_embeddings, self.features),
            ("vocab", "embed"),
        )

    def __call__(self, tokens: Array) -> Array:  # (...,) -> (..., embed)
        return jnp.asarray(self.embedding, self.dtype)[tokens]

    def attend(self, x: Array) -> Array:  # (..., embed) -> (..., vocab), in float32
        return jnp.dot(jnp.asarray(x, jnp.float32), jnp.asarray(self.embedding, jnp.float32).T)


def relative_position_bucket(
    relative_position: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bucketing of key − query distances: exact below num_buckets/2 (or /4 if
    bidirectional), logarithmic up to max_distance, clipped beyond (Raffel et al. §2.1)."""
    n = -relative_position
    ret = np.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0).astype(np.int32) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    max_exact = num_buckets // 2
    log_ratio = np.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
    large = max_exact + (
        log_ratio / np.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(np.int32)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(n < max_exact, n, large)


class RelativePositionBiases(nn.Module):
    """Learned scalar bias per (head, distance bucket), added to attention logits."""

    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, qlen: int, klen: int, bidirectional: bool) -> Array:
        """Returns the bias, shape (1, heads, qlen, klen)."""
        rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]  # (qlen, klen)
        bucket = relative_position_bucket(rel, bidirectional, self.num_buckets, self.max_distance)
        table = _param(
            self,
            "rel_embedding",
            nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
            (self.num_heads, self.num_buckets),
            ("heads", "relpos_buckets"),
        )
        return jnp.asarray(table, self.dtype)[:, bucket][None]  # (1, heads, qlen, klen)


class Attention(nn.Module):
    """Multi-head dot-product attention with an optional autoregressive KV cache.

    With `decode=True` the first call (at init) allocates the cache
    `cached_key`/`cached_value` (batch, max_length, heads, head_dim) and
    `cache_index`; later calls take one query position and append its key/value.
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,  # (batch, q_len, embed)
        inputs_kv: Array,  # (batch, kv_len, embed)
        mask: Array | None = None,  # (batch, 1 | heads, q_len, kv_len), 1 = attend
        bias: Array | None = None,  # (1, heads, q_len | max_len, kv_len)
        *,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        shape, axes = (self.num_heads, self.head_dim), ("embed", "joined_kv")
        q_init = lambda *a: _fan_in_normal(*a) / np.sqrt(self.head_dim).astype(np.float32)
        query = Dense(shape, axes, kernel_init=q_init, dtype=self.dtype, name="query")(inputs_q)
        key = Dense(shape, axes, kernel_init=_fan_in_normal, dtype=self.dtype, name="key")(
            inputs_kv
        )
        value = Dense(shape, axes, kernel_init=_fan_in_normal, dtype=self.dtype, name="value")(
            inputs_kv
        )  # each (batch, len, heads, head_dim)

        if decode:
            initialised = self.has_variable("cache", "cached_key")
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, key.dtype)
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            if initialised:
                i, max_len = index.value, cached_key.value.shape[1]
                key = jax.lax.dynamic_update_slice_in_dim(cached_key.value, key, i, axis=1)
                value = jax.lax.dynamic_update_slice_in_dim(cached_value.value, value, i, axis=1)
                cached_key.value, cached_value.value = key, value
                index.value = i + 1
                step_mask = (jnp.arange(max_len) <= i)[None, None, None, :]  # (1,1,1,max_len)
                mask = step_mask if mask is None else mask * step_mask
                if bias is not None:  # the bias row of query position i
                    bias = jax.lax.dynamic_slice_in_dim(bias, i, 1, axis=2)

        logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask > 0, logits, -1e10)
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        weights = jax.nn.softmax(logits).astype(self.dtype)  # (batch, heads, q, k)
        if not deterministic and self.dropout_rate > 0.0:
            keep = jax.random.bernoulli(
                self.make_rng("dropout"), 1.0 - self.dropout_rate, weights.shape
            )
            weights = weights * keep / (1.0 - self.dropout_rate)
        x = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # (batch, q, heads, head_dim)
        out = Dense(
            (inputs_q.shape[-1],),
            ("joined_kv", "embed"),
            n_in_axes=2,
            kernel_init=_fan_in_normal,
            dtype=self.dtype,
            name="out",
        )
        return out(x)  # (batch, q, embed)


class Mlp(nn.Module):
    """Gated MLP: wo(∏ᵢ actᵢ(x wiᵢ)); ('gelu', 'linear') is T5 1.1's gated GELU."""

    intermediate_dim: int
    activations: Sequence[str] = ("gelu", "linear")
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:  # (b, l, embed)
        h = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            y = Dense((self.intermediate_dim,), ("embed", "mlp"), dtype=self.dtype, name=name)(x)
            y = y if act == "linear" else getattr(nn, act)(y)
            h = y if h is None else h * y  # (b, l, mlp)
        h = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
        return Dense((x.shape[-1],), ("mlp", "embed"), dtype=self.dtype, name="wo")(h)
