"""jaxmerge.sharding: meshes, regex and T5X logical-axis rules, and the sufficiently-sharded check,
on 8 fake CPU devices; then a restore through those rules."""

import gin
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxmerge import checkpoints, sharding
from jaxmerge.checkpoints import ParamInfo
from jaxmerge.cli import gin_flags
from jaxmerge.errors import InputError


def test_make_mesh_fills_minus_one_and_validates():
    mesh = sharding.make_mesh((-1, 2), ("data", "model"))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert dict(sharding.make_mesh().shape) == {"data": 8}
    with pytest.raises(InputError, match="needs 16 devices"):
        sharding.make_mesh((8, 2), ("data", "model"))
    with pytest.raises(InputError, match="differ in length"):
        sharding.make_mesh((8,), ("data", "model"))


def test_mesh_shape_is_gin_configurable():
    with gin.unlock_config():
        gin.parse_config(
            "jaxmerge.configured_mesh.shape = (2, 4)\n"
            "jaxmerge.configured_mesh.axis_names = ('data', 'model')"
        )
    try:
        assert dict(gin_flags.configured_mesh().shape) == {"data": 2, "model": 4}
    finally:
        gin.clear_config()


def test_regex_rules_first_full_match_wins_and_fit_the_shape():
    mesh = sharding.make_mesh((4, 2), ("data", "model"))
    rules = [
        (r".*/attention/.*/kernel", P("data", "model")),
        (r".*kernel", P(None, "model")),
    ]
    assert sharding.spec_from_rules("enc/attention/query/kernel", (8, 8), rules, mesh) == P(
        "data", "model"
    )
    assert sharding.spec_from_rules("enc/mlp/wi/kernel", (8, 8), rules, mesh) == P(None, "model")
    assert sharding.spec_from_rules("enc/norm/scale", (8,), rules, mesh) == P()
    # 6 is not divisible by 4: that dimension stays whole, the other is still sharded
    assert sharding.spec_from_rules("x/attention/q/kernel", (6, 8), rules, mesh) == P(None, "model")
    with pytest.raises(InputError, match="entries"):
        sharding.spec_from_rules("x/attention/q/kernel", (8,), rules, mesh)


def test_t5x_logical_axis_rules_for_t5_names():
    mesh = sharding.make_mesh((4, 2), ("data", "model"))
    rules = sharding.t5x_rules(mesh)
    expect = {
        "token_embedder/embedding": ((32, 8), P("model")),
        "encoder/layers_0/attention/query/kernel": ((8, 8), P(None, "model")),
        "decoder/layers_1/encoder_decoder_attention/out/kernel": ((8, 8), P("model")),
        "encoder/layers_0/mlp/wi_0/kernel": ((8, 16), P(None, "model")),
        "encoder/layers_0/mlp/wo/kernel": ((16, 8), P("model")),
        "encoder/layers_0/pre_attention_layer_norm/scale": ((8,), P()),
        "encoder/relpos_bias/rel_embedding": ((2, 32), P("model")),
        "decoder/logits_dense/kernel": ((8, 32), P(None, "model")),
    }
    for name, (shape, spec) in expect.items():
        assert sharding.spec_from_rules(name, shape, rules, mesh) == spec, name


def test_check_sharded_flags_large_replicated_parameters():
    mesh = sharding.make_mesh((8,), ("data",))
    params = {
        "big/kernel": ParamInfo((1024, 1024), np.float32),  # 4 MiB
        "small/scale": ParamInfo((1024,), np.float32),
        "odd/kernel": ParamInfo((1023, 1025), np.float32),  # 8 does not divide either dim
    }
    placement = sharding.shardings(params, mesh, [(r".*kernel", P("data"))])
    assert sharding.check_sharded(params, placement, min_bytes=1 << 20, strict=False) == [
        "odd/kernel"
    ]
    with pytest.raises(InputError, match="odd/kernel"):
        sharding.check_sharded(params, placement, min_bytes=1 << 20)


@pytest.mark.parametrize("fmt", checkpoints.FORMATS)
def test_restore_with_t5x_rules_places_each_shard_on_its_device(tmp_path, fmt):
    rng = np.random.default_rng(1)
    model = {
        "encoder/layers_0/attention/query/kernel": rng.standard_normal((16, 8)).astype(np.float32),
        "token_embedder/embedding": rng.standard_normal((32, 16)).astype(np.float32),
    }
    writer = checkpoints.create(
        tmp_path / "m", fmt, {n: ParamInfo(a.shape, a.dtype) for n, a in model.items()}
    )
    for name, array in model.items():
        writer.write(name, array)
    writer.finalize()
    mesh = sharding.make_mesh((4, 2), ("data", "model"))
    with checkpoints.open(tmp_path / "m") as reader:
        placement = sharding.shardings(reader.params, mesh, sharding.t5x_rules(mesh))
        for name, array in model.items():
            x = reader.read(name, placement[name])
            assert x.sharding == placement[name]
            assert {s.device for s in x.addressable_shards} == set(jax.devices())
            for shard in x.addressable_shards:
                assert shard.data.devices() == {shard.device}
                np.testing.assert_array_equal(np.asarray(shard.data), array[shard.index])
