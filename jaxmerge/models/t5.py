"""T5 1.1 encoder-decoder (Raffel et al. 2020, arXiv:1910.10683) with T5X's names.

Parameter paths and shapes equal those of T5X's `t5x/examples/t5/network.py`, so a
T5X checkpoint's `target` tree loads here and ours loads there, e.g. (tiny sizes):

    token_embedder/embedding                          (vocab, embed)
    encoder/relpos_bias/rel_embedding                 (heads, 32)
    encoder/layers_0/pre_attention_layer_norm/scale   (embed,)
    encoder/layers_0/attention/{query,key,value}/kernel  (embed, heads*head_dim)
    encoder/layers_0/attention/out/kernel             (heads*head_dim, embed)
    encoder/layers_0/mlp/{wi_0,wi_1}/kernel           (embed, mlp)
    encoder/layers_0/mlp/wo/kernel                    (mlp, embed)
    encoder/encoder_norm/scale                        (embed,)
    decoder/layers_0/{self_attention,encoder_decoder_attention}/...
    decoder/layers_0/pre_{self,cross}_attention_layer_norm/scale, pre_mlp_layer_norm/scale
    decoder/decoder_norm/scale, decoder/logits_dense/kernel (embed, vocab)

`T5Config` has the field names of T5X's `network.T5Config`, so a T5X model gin
file translates line by line (see gin_configs/models/).
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmerge.models.layers import Attention, Dense, Embed, Mlp, RelativePositionBiases, RMSNorm

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyperparameters; names and defaults as T5X's `network.T5Config`."""

    vocab_size: int
    dtype: str = "float32"  # activation dtype; parameters are always float32
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    head_dim: int = 64
    mlp_dim: int = 2048
    mlp_activations: Sequence[str] = ("relu",)
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    float32_attention_logits: bool = False  # accepted for T5X gin files; logits are float32

    def __post_init__(self):
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)


def attention_mask(query_ok: Array, key_ok: Array) -> Array:
    """(batch, q), (batch, k) -> (batch, 1, q, k): 1 where both positions are valid."""
    return (query_ok[:, None, :, None] & key_ok[:, None, None, :]).astype(jnp.float32)


class EncoderLayer(nn.Module):
    config: T5Config
    relative_embedding: nn.Module

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:  # (b, l, e)
        cfg, dt = self.config, self.config.dtype
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        bias = self.relative_embedding(x.shape[-2], x.shape[-2], True)
        y = RMSNorm(dtype=dt, name="pre_attention_layer_norm")(x)
        y = Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, name="attention")(
            y, y, mask, bias, deterministic=deterministic
        )
        x = x + drop(y, deterministic=deterministic)
        y = RMSNorm(dtype=dt, name="pre_mlp_layer_norm")(x)
        y = Mlp(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dt, name="mlp")(
            y, deterministic
        )
        return x + drop(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
    config: T5Config
    relative_embedding: nn.Module

    @nn.compact
    def __call__(self, x, encoded, self_mask, cross_mask, deterministic, decode, max_length):
        cfg, dt = self.config, self.config.dtype
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        length = max_length if decode else x.shape[-2]
        bias = self.relative_embedding(length, length, False)  # (1, heads, length, length)
        attn = lambda name: Attention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, name=name)
        y = RMSNorm(dtype=dt, name="pre_self_attention_layer_norm")(x)
        y = attn("self_attention")(
            y, y, self_mask, bias, deterministic=deterministic, decode=decode
        )
        x = x + drop(y, deterministic=deterministic)
        y = RMSNorm(dtype=dt, name="pre_cross_attention_layer_norm")(x)
        y = attn("encoder_decoder_attention")(y, encoded, cross_mask, deterministic=deterministic)
        x = x + drop(y, deterministic=deterministic)
        y = RMSNorm(dtype=dt, name="pre_mlp_layer_norm")(x)
        y = Mlp(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dt, name="mlp")(
            y, deterministic
        )
        return x + drop(y, deterministic=deterministic)


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens: Array, mask: Array, deterministic: bool) -> Array:
        cfg = self.config
        rel = RelativePositionBiases(cfg.num_heads, dtype=cfg.dtype, name="relpos_bias")
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        x = drop(self.shared_embedding(tokens), deterministic=deterministic)  # (b, l, embed)
        for i in range(cfg.num_encoder_layers):
            x = EncoderLayer(cfg, rel, name=f"layers_{i}")(x, mask, deterministic)
        x = RMSNorm(dtype=cfg.dtype, name="encoder_norm")(x)
        return drop(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, tokens, self_mask, cross_mask, deterministic, decode, max_length):
        cfg = self.config
        rel = RelativePositionBiases(cfg.num_heads, dtype=cfg.dtype, name="relpos_bias")
        drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
        y = drop(self.shared_embedding(tokens), deterministic=deterministic)  # (b, l, embed)
        for i in range(cfg.num_decoder_layers):
            y = DecoderLayer(cfg, rel, name=f"layers_{i}")(
                y, encoded, self_mask, cross_mask, deterministic, decode, max_length
            )
        y = drop(RMSNorm(dtype=cfg.dtype, name="decoder_norm")(y), deterministic=deterministic)
        if cfg.logits_via_embedding:
            return self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1])
        dense = Dense((cfg.vocab_size,), ("embed", "vocab"), dtype=jnp.float32, name="logits_dense")
        return dense(y)  # (b, l, vocab), float32


class Transformer(nn.Module):
    """Encoder-decoder; `__call__` gives teacher-forced logits (batch, target_len, vocab)."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=False):
        """(batch, in_len) int32 -> (batch, in_len, embed). Token 0 is padding."""
        ok = encoder_input_tokens > 0
        mask = attention_mask(ok, ok)
        if encoder_segment_ids is not None:  # packed examples attend within their segment
            same = encoder_segment_ids[:, None, :, None] == encoder_segment_ids[:, None, None, :]
            mask = mask * same
        return self.encoder(encoder_input_tokens, mask, not enable_dropout)

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        enable_dropout=False,
        decode=False,
        max_decode_length=None,
    ):
        """Logits (batch, dec_len, vocab). With `decode=True`, dec_len is 1 per call and
        the KV cache (collection 'cache', created by `init_cache`) is advanced."""
        enc_ok = encoder_input_tokens > 0
        if decode:
            self_mask = None
            cross_mask = attention_mask(jnp.ones_like(decoder_input_tokens, bool), enc_ok)
        else:
            dec_ok = decoder_target_tokens > 0
            length = decoder_target_tokens.shape[-1]
            causal = jnp.tril(jnp.ones((length, length), jnp.float32))[None, None]
            self_mask = attention_mask(dec_ok, dec_ok) * causal
            cross_mask = attention_mask(dec_ok, enc_ok)
            if decoder_segment_ids is not None:
                d, e = decoder_segment_ids, encoder_segment_ids
                self_mask = self_mask * (d[:, None, :, None] == d[:, None, None, :])
                cross_mask = cross_mask * (d[:, None, :, None] == e[:, None, None, :])
        return self.decoder(
            encoded,
            decoder_input_tokens,
            self_mask,
            cross_mask,
            not enable_dropout,
            decode,
            max_decode_length,
        )

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        enable_dropout=False,
        decode=False,
        max_decode_length=None,
    ):
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout,
            decode,
            max_decode_length,
        )


def init_params(config: T5Config, rng: Array, input_len: int = 8, target_len: int = 8):
    """Boxed parameters (each `nn.LogicallyPartitioned` with its axis names)."""
    enc = jnp.ones((1, input_len), jnp.int32)
    dec = jnp.ones((1, target_len), jnp.int32)
    return Transformer(config).init(rng, enc, dec, dec)["params"]


def param_axes(config: T5Config) -> dict:
    """Nested dict of logical axis names (tuples), shaped like the parameters; no FLOPs."""
    boxed = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return jax.tree.map(
        lambda b: tuple(b.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def config_from_shapes(shapes: dict[str, Sequence[int]], **overrides) -> T5Config:
    """The T5Config whose parameters have these "/"-joined names and shapes.

    Reads every size from the tensors themselves: vocab and embed from
    `token_embedder/embedding`, heads from `encoder/relpos_bias/rel_embedding`, head_dim
    from the query kernel, mlp from `wi`/`wi_0`, the layer counts from `layers_<i>`.
    Shapes cannot tell gelu from relu gating: `wi_0`/`wi_1` are taken as T5 1.1's
    ('gelu', 'linear'), a single `wi` as T5's ('relu',). Dropout is 0 (inference);
    `overrides` replace any field. Raises ValueError naming a missing parameter.
    """

    def shape(name: str) -> tuple[int, ...]:
        if name not in shapes:
            raise ValueError(f"no parameter {name!r}: not a T5 1.1 checkpoint in T5X names")
        return tuple(shapes[name])

    vocab, emb = shape("token_embedder/embedding")
    heads = shape("encoder/relpos_bias/rel_embedding")[0]
    query = shape("encoder/layers_0/attention/query/kernel")[1]
    gated = "encoder/layers_0/mlp/wi_0/kernel" in shapes
    mlp = shape(f"encoder/layers_0/mlp/{'wi_0' if gated else 'wi'}/kernel")[1]

    def layers(stack: str) -> int:
        prefix = f"{stack}/layers_"
        found = {int(n[len(prefix) :].split("/")[0]) for n in shapes if n.startswith(prefix)}
        return max(found) + 1 if found else 0

    fields = dict(
        vocab_size=vocab,
        emb_dim=emb,
        num_heads=heads,
        head_dim=query // heads,
        num_encoder_layers=layers("encoder"),
        num_decoder_layers=layers("decoder"),
        mlp_dim=mlp,
        mlp_activations=("gelu", "linear") if gated else ("relu",),
        dropout_rate=0.0,
        logits_via_embedding="decoder/logits_dense/kernel" not in shapes,
    )
    return T5Config(**{**fields, **overrides})
