"""T5 1.1 model: T5X names/shapes/axes, decoding with/without cache, scoring, HF import."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmerge.cli import gin_flags
from jaxmerge.models import decoding, hf_t5, params, t5

# T5X's t5_1_1/tiny.gin sizes (vocab shrunk for speed).
T5X_TINY = t5.T5Config(
    vocab_size=384,
    emb_dim=8,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    head_dim=3,
    mlp_dim=16,
    mlp_activations=("gelu", "linear"),
    dropout_rate=0.0,
)
SMALL = dataclasses.replace(T5X_TINY, emb_dim=32, head_dim=8, mlp_dim=64)


def t5x_expected(cfg: t5.T5Config) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Name -> (shape, logical axes) as T5X's network.py/layers.py create them."""
    e, hd, m, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    norm = ((e,), ("embed",))
    qkv = {f"{n}/kernel": ((e, hd), ("embed", "joined_kv")) for n in ("query", "key", "value")}
    attn = {**qkv, "out/kernel": ((hd, e), ("joined_kv", "embed"))}
    mlp = {
        "mlp/wi_0/kernel": ((e, m), ("embed", "mlp")),
        "mlp/wi_1/kernel": ((e, m), ("embed", "mlp")),
        "mlp/wo/kernel": ((m, e), ("mlp", "embed")),
    }
    out = {"token_embedder/embedding": ((v, e), ("vocab", "embed"))}
    for stack in ("encoder", "decoder"):
        out[f"{stack}/relpos_bias/rel_embedding"] = (
            (cfg.num_heads, 32),
            ("heads", "relpos_buckets"),
        )
        out[f"{stack}/{stack}_norm/scale"] = norm
    for i in range(cfg.num_encoder_layers):
        p = f"encoder/layers_{i}"
        out.update({f"{p}/attention/{k}": s for k, s in attn.items()})
        out.update({f"{p}/{k}": s for k, s in mlp.items()})
        out[f"{p}/pre_attention_layer_norm/scale"] = norm
        out[f"{p}/pre_mlp_layer_norm/scale"] = norm
    for i in range(cfg.num_decoder_layers):
        p = f"decoder/layers_{i}"
        for a in ("self_attention", "encoder_decoder_attention"):
            out.update({f"{p}/{a}/{k}": s for k, s in attn.items()})
        out.update({f"{p}/{k}": s for k, s in mlp.items()})
        for n in ("pre_self_attention", "pre_cross_attention", "pre_mlp"):
            out[f"{p}/{n}_layer_norm/scale"] = norm
    out["decoder/logits_dense/kernel"] = ((e, v), ("embed", "vocab"))
    return out


@pytest.fixture(scope="module")
def small_params():
    return params.unbox(t5.init_params(SMALL, jax.random.key(0)))


def test_names_shapes_and_axes_equal_t5x():
    boxed = jax.eval_shape(lambda: t5.init_params(T5X_TINY, jax.random.key(0)))
    shapes = {k: v.shape for k, v in params.flatten(params.unbox(boxed)).items()}
    axes = params.flatten(t5.param_axes(T5X_TINY))
    expected = t5x_expected(T5X_TINY)
    assert shapes == {k: s for k, (s, _) in expected.items()}
    assert axes == {k: a for k, (_, a) in expected.items()}


def test_tied_embedding_has_no_logits_dense():
    cfg = dataclasses.replace(T5X_TINY, logits_via_embedding=True)
    names = params.flatten(
        params.unbox(jax.eval_shape(lambda: t5.init_params(cfg, jax.random.key(0))))
    )
    assert "decoder/logits_dense/kernel" not in names


@pytest.mark.parametrize(
    "size,expected",
    [("small", 76_961_152), ("base", 247_577_856), ("large", 783_150_080)],
)
def test_gin_sizes_match_t5_1_1_parameter_counts(size, expected):
    """With T5's 32128-token vocabulary the gin sizes have T5 1.1's parameter counts."""
    gin_flags.parse([f"gin_configs/models/t5_{size}.gin"], ["DROPOUT_RATE = 0.0"])
    cfg = dataclasses.replace(gin_flags.macro("MODEL"), vocab_size=32128)
    shapes = jax.eval_shape(lambda: t5.init_params(cfg, jax.random.key(0)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expected


def test_flatten_unflatten_roundtrip(small_params):
    flat = params.flatten(small_params)
    assert all("/" in k for k in flat)
    back = params.unflatten(flat)
    assert jax.tree.structure(back) == jax.tree.structure(small_params)


def test_decode_with_and_without_cache_agree(small_params):
    x = jax.random.randint(jax.random.key(1), (8, 12), 1, SMALL.vocab_size)
    x = x.at[:, 9:].set(0)  # padding
    cached = decoding.greedy_decode(SMALL, small_params, x, 10)
    uncached = decoding.greedy_decode_uncached(SMALL, small_params, x, 10)
    np.testing.assert_array_equal(cached, uncached)


def test_decode_and_score_sharded_over_8_devices(small_params):
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    data = NamedSharding(mesh, PartitionSpec("data"))
    x = jax.random.randint(jax.random.key(2), (8, 12), 1, SMALL.vocab_size)
    y = jax.random.randint(jax.random.key(3), (8, 6), 1, SMALL.vocab_size)
    batch = {"encoder_input_tokens": x, "decoder_target_tokens": y}
    sharded = jax.device_put(batch, data)
    out = decoding.greedy_decode(SMALL, small_params, sharded["encoder_input_tokens"], 6)
    assert out.sharding.is_equivalent_to(data, 2)
    np.testing.assert_array_equal(out, decoding.greedy_decode(SMALL, small_params, x, 6))
    np.testing.assert_allclose(
        decoding.score_batch(SMALL, small_params, sharded),
        decoding.score_batch(SMALL, small_params, batch),
        rtol=1e-5,
    )


def test_score_equals_log_softmax_sum(small_params):
    x = jax.random.randint(jax.random.key(4), (3, 10), 1, SMALL.vocab_size)
    y = np.array([[5, 6, 7, 1, 0], [9, 1, 0, 0, 0], [3, 4, 5, 6, 1]], np.int32)
    scores = decoding.score_batch(
        SMALL, small_params, {"encoder_input_tokens": x, "decoder_target_tokens": y}
    )
    dec_in = np.pad(y, ((0, 0), (1, 0)))[:, :-1]
    logits = t5.Transformer(SMALL).apply({"params": small_params}, x, dec_in, y)
    logits = np.asarray(logits, np.float64)
    expected = []
    for b in range(3):
        total = 0.0
        for t in range(5):
            if y[b, t] > 0:
                row = logits[b, t]
                total += row[y[b, t]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
        expected.append(total)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_padding_does_not_change_scores(small_params):
    x = jax.random.randint(jax.random.key(5), (1, 6), 1, SMALL.vocab_size)
    y = jnp.array([[7, 8, 1]], jnp.int32)
    short = decoding.score_batch(
        SMALL, small_params, {"encoder_input_tokens": x, "decoder_target_tokens": y}
    )
    padded = decoding.score_batch(
        SMALL,
        small_params,
        {
            "encoder_input_tokens": jnp.pad(x, ((0, 0), (0, 4))),
            "decoder_target_tokens": jnp.pad(y, ((0, 0), (0, 3))),
        },
    )
    np.testing.assert_allclose(short, padded, rtol=1e-5)


FLAN_T5_SMALL_CONFIG = {  # the fields of google/flan-t5-small's config.json we read
    "d_ff": 1024,
    "d_kv": 64,
    "d_model": 512,
    "feed_forward_proj": "gated-gelu",
    "num_decoder_layers": 8,
    "num_heads": 6,
    "num_layers": 8,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
    "dropout_rate": 0.1,
}


def test_hf_config_maps_to_t5_1_1_small():
    cfg = hf_t5.config_from_hf(FLAN_T5_SMALL_CONFIG)
    gin_flags.parse(["gin_configs/models/t5_small.gin"], ["DROPOUT_RATE = 0.1"])
    assert cfg == dataclasses.replace(gin_flags.macro("MODEL"), vocab_size=32128)


def test_hf_safetensors_import(tmp_path, small_params):
    from safetensors.numpy import save_file

    flat = {k: np.asarray(v) for k, v in params.flatten(small_params).items()}
    hf = hf_t5.to_hf(SMALL, flat)
    assert hf["encoder.block.1.layer.0.SelfAttention.q.weight"].shape == (32, 32)
    assert hf["decoder.block.0.layer.2.DenseReluDense.wi_1.weight"].shape == (64, 32)
    assert hf["lm_head.weight"].shape == (SMALL.vocab_size, 32)
    save_file(hf, str(tmp_path / "model.safetensors"))
    hf_cfg = dict(FLAN_T5_SMALL_CONFIG, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2)
    hf_cfg.update(num_decoder_layers=2, vocab_size=SMALL.vocab_size, dropout_rate=0.0)
    (tmp_path / "config.json").write_text(json.dumps(hf_cfg))
    cfg, loaded = hf_t5.load_hf_t5(tmp_path)
    assert cfg == SMALL
    assert loaded.keys() == flat.keys()
    for k in flat:
        np.testing.assert_array_equal(loaded[k], flat[k], err_msg=k)


def test_bfloat16_activations_keep_float32_params():
    """T5X model gin files set dtype = 'bfloat16'; parameters stay float32."""
    cfg = dataclasses.replace(SMALL, dtype="bfloat16")
    p = params.unbox(t5.init_params(cfg, jax.random.key(0)))
    assert {x.dtype for x in jax.tree.leaves(p)} == {jnp.dtype("float32")}
    x = jax.random.randint(jax.random.key(1), (2, 8), 1, cfg.vocab_size)
    y = jax.random.randint(jax.random.key(2), (2, 4), 1, cfg.vocab_size)
    scores = decoding.score_batch(cfg, p, {"encoder_input_tokens": x, "decoder_target_tokens": y})
    assert np.isfinite(scores).all()


@pytest.mark.parametrize(
    "config",
    [
        t5.T5Config(
            vocab_size=384,
            emb_dim=64,
            num_heads=4,
            num_encoder_layers=2,
            num_decoder_layers=3,
            head_dim=16,
            mlp_dim=128,
            mlp_activations=("gelu", "linear"),
            dropout_rate=0.0,
        ),
        t5.T5Config(
            vocab_size=128,
            emb_dim=32,
            num_heads=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            head_dim=8,
            mlp_dim=48,
            dropout_rate=0.0,
            logits_via_embedding=True,
        ),
    ],
)
def test_config_from_shapes_recovers_the_config(config):
    tree = jax.eval_shape(lambda: params.unbox(t5.init_params(config, jax.random.key(0))))
    shapes = {name: leaf.shape for name, leaf in params.flatten(tree).items()}
    assert t5.config_from_shapes(shapes) == config
    with pytest.raises(ValueError, match="no parameter 'token_embedder/embedding'"):
        t5.config_from_shapes({k: v for k, v in shapes.items() if "token_embedder" not in k})
