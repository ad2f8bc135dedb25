"""Training: loss goes down, checkpoints round-trip through the model, CLI resumes."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from jaxmerge import checkpoints, training
from jaxmerge.cli import main as cli
from jaxmerge.errors import CheckpointError
from jaxmerge.models import decoding, params, t5
from tests.tiny_t5 import TINY
from tests.xla_flags import TEST_XLA_FLAGS

LENGTHS = {"inputs": 96, "targets": 16}


@pytest.fixture(scope="module")
def batch():
    cfg = training.DatasetConfig("jaxmerge_held_in_topic", LENGTHS, batch_size=8, seed=1)
    return next(training.make_dataset(cfg, seed=1))


def test_few_steps_reduce_loss(batch):
    tx = training.adafactor(training.constant(0.01))
    p = params.unbox(t5.init_params(TINY, jax.random.key(0)))
    state = tx.init(p)
    step_fn = training.make_train_step(TINY, tx)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    sharded = jax.device_put(batch, data)
    losses = []
    for step in range(25):
        p, state, loss = step_fn(p, state, sharded, jax.random.key(0), step)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_loss_is_token_mean_cross_entropy(batch):
    p = params.unbox(t5.init_params(TINY, jax.random.key(0)))
    loss = training.loss_fn(TINY, p, batch, jax.random.key(0), z_loss=0.0)
    logits = t5.Transformer(TINY).apply(
        {"params": p},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        batch["decoder_target_tokens"],
        batch["encoder_segment_ids"],
        batch["decoder_segment_ids"],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
    w = batch["decoder_loss_weights"]
    np.testing.assert_allclose(loss, np.sum(ce * w) / np.sum(w), rtol=1e-5)


def test_linear_decay_values():
    lr = training.linear_decay(0.03, warmup_steps=4, decay_steps=14, final_fraction=0.1)
    got = [float(lr(s)) for s in (0, 1, 3, 4, 9, 13, 14, 100)]
    want = [0.0075, 0.015, 0.03, 0.03, 0.03 * (1 - 0.9 * 5 / 10), 0.03 * (1 - 0.9 * 9 / 10)]
    np.testing.assert_allclose(got, [*want, 0.003, 0.003], rtol=1e-6)
    no_warmup = training.linear_decay(1.0, warmup_steps=0, decay_steps=4, final_fraction=0.0)
    np.testing.assert_allclose([float(no_warmup(s)) for s in range(6)], [1, 0.75, 0.5, 0.25, 0, 0])
    # Jittable (optax calls it with the optimizer's traced step count).
    assert float(jax.jit(lr)(np.int32(9))) == pytest.approx(want[4])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(warmup_steps=5, decay_steps=5),
        dict(decay_steps=0),
        dict(final_fraction=2),
        dict(decay_steps=object()),  # what gin passes for an unset `DECAY_STEPS = %gin.REQUIRED`
    ],
)
def test_linear_decay_bad_arguments(kwargs):
    from jaxmerge.errors import InputError

    with pytest.raises(InputError, match="linear_decay"):
        training.linear_decay(**kwargs)


def test_t5x_checkpoint_roundtrip_through_model(tmp_path):
    p = params.unbox(t5.init_params(TINY, jax.random.key(3)))
    tx = training.adafactor(training.constant(0.01))
    path = training.save_checkpoint(tmp_path, 7, p, tx.init(p))
    assert path.name == "checkpoint_7" and training.latest_checkpoint(tmp_path) == path
    with checkpoints.open(path) as reader:  # T5X's format, as T5X restores it
        assert reader.format == "t5x" and reader.step == 7
        assert reader.params["decoder/logits_dense/kernel"].shape == (TINY.emb_dim, 384)
    restored, step, opt_state = training.restore_checkpoint(path)
    assert step == 7 and opt_state is None
    assert params.flatten(restored).keys() == params.flatten(p).keys()
    x = jax.random.randint(jax.random.key(4), (2, 10), 1, 300)
    y = jax.random.randint(jax.random.key(5), (2, 5), 1, 300)
    batch = {"encoder_input_tokens": x, "decoder_target_tokens": y}
    np.testing.assert_array_equal(
        decoding.score_batch(TINY, restored, batch), decoding.score_batch(TINY, p, batch)
    )


def test_wrong_shapes_name_the_parameter(tmp_path):
    p = params.unbox(t5.init_params(TINY, jax.random.key(0)))
    bigger = dataclasses.replace(TINY, mlp_dim=128)
    want = jax.eval_shape(lambda: params.unbox(t5.init_params(bigger, jax.random.key(0))))
    with pytest.raises(CheckpointError, match=r"mlp/wi_0/kernel: checkpoint has shape \(32, 64\)"):
        training._check_params(p, want, tmp_path)


def test_train_is_a_cli_command():
    assert cli.COMMANDS["train"][0] == "jaxmerge.cli.train"


def _train_cli(*args, cache=None, timeout=240):
    """`jaxmerge train ...` as a user runs it, on one
    CPU device, sharing a persistent compilation cache between runs to save compile time."""
    env = dict(os.environ, XLA_FLAGS=TEST_XLA_FLAGS)
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
        )
    return subprocess.run(
        [sys.executable, "-m", "jaxmerge", "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_cli_missing_model_dir_exits_2():
    out = _train_cli(
        "--gin_file=gin_configs/models/t5_tiny.gin", "--gin_file=gin_configs/runs/pretrain.gin"
    )
    assert out.returncode == 2, out.stderr
    assert "MODEL_DIR" in out.stderr.splitlines()[-1]


@pytest.mark.slow
def test_cli_pretrain_then_resume(tmp_path):
    model_dir = tmp_path / "pt"
    args = [
        "--gin_file=gin_configs/models/t5_tiny.gin",
        "--gin_file=gin_configs/runs/pretrain.gin",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
        "--gin.BATCH_SIZE=8",
        "--gin.SAVE_PERIOD=2",
        f"--gin.MODEL_DIR='{model_dir}'",
        "--gin.MIXTURE_OR_TASK_NAME='jaxmerge_pretrain'",
    ]
    first = _train_cli(*args, "--gin.TRAIN_STEPS=2", cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (model_dir / "checkpoint_2").is_dir() and (model_dir / "operative_config.gin").exists()
    assert "network.T5Config.emb_dim = 64" in (model_dir / "config.gin").read_text()
    assert list((model_dir / "train").glob("events.out.tfevents.*"))
    assert "tokens_per_s" in first.stdout
    resumed = _train_cli(*args, "--gin.TRAIN_STEPS=4", cache=tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == [
        "checkpoint_2",
        "checkpoint_4",
    ]
    assert training.restore_checkpoint(model_dir / "checkpoint_4")[1] == 4


def test_finetune_from_initial_checkpoint_then_resume(tmp_path, capsys):
    p = params.unbox(t5.init_params(TINY, jax.random.key(8)))
    tx = training.adafactor(training.constant(0.01))
    initial = training.save_checkpoint(tmp_path / "base", 10, p, tx.init(p))
    cfg = training.DatasetConfig("jaxmerge_held_in_sentiment", LENGTHS, batch_size=8)
    run = functools.partial(
        training.train,
        model=TINY,
        model_dir=str(tmp_path / "expert"),
        train_dataset_cfg=cfg,
        learning_rate_fn=training.linear_decay(0.001, warmup_steps=0, decay_steps=4),
        initial_checkpoint_path=str(initial),
        save_period=100,
        log_period=1,
    )
    metrics = run(total_steps=12)
    assert "initialised from" in capsys.readouterr().out
    assert np.isfinite(metrics["loss"]) and metrics["tokens_per_s"] > 0
    # The schedule counts from the fine-tuning's first step (the optimizer starts fresh):
    # the 2nd update (step 12) used lr(1), and that is what is logged.
    assert metrics["learning_rate"] == pytest.approx(0.001 * (1 - 0.9 / 4))
    assert sorted(x.name for x in (tmp_path / "expert").glob("checkpoint_*")) == ["checkpoint_12"]
    tuned, step, _ = training.restore_checkpoint(tmp_path / "expert" / "checkpoint_12")
    assert step == 12
    stats = json.loads((tmp_path / "expert" / "train_stats.json").read_text())
    assert stats["step"] == 12 and stats["start_step"] == 10 and stats["seconds"] > 0
    assert 0 < stats["tokens"] <= 2 * 8 * sum(LENGTHS.values())  # real tokens of 2 steps
    run(total_steps=14)  # resumed: the totals add up
    more = json.loads((tmp_path / "expert" / "train_stats.json").read_text())
    assert more["step"] == 14 and more["start_step"] == 10 and more["tokens"] > stats["tokens"]
    assert more["seconds"] > stats["seconds"]
    before, after = params.flatten(p), params.flatten(tuned)
    assert not np.allclose(
        before["encoder/layers_0/mlp/wo/kernel"], after["encoder/layers_0/mlp/wo/kernel"]
    )


@pytest.mark.parametrize(
    "recipe", ["pretrain", "finetune", "instruction_tune", "expert", "multitask"]
)
@pytest.mark.parametrize(
    "size", ["nano", "micro", "tiny", "milli", "mini", "small", "base", "large", "xl"]
)
def test_recipes_parse(recipe, size):
    from jaxmerge.cli import gin_flags

    required = ["MODEL_DIR = '/m'", "TRAIN_STEPS = 3", "INITIAL_CHECKPOINT_PATH = '/c'"]
    required.append("MIXTURE_OR_TASK_NAME = 'jaxmerge_held_in_topic'")
    files = [f"gin_configs/models/t5_{size}.gin", f"gin_configs/runs/{recipe}.gin"]
    gin_flags.parse(files, required if recipe != "pretrain" else required[:2] + required[3:])
    assert isinstance(gin_flags.macro("MODEL"), t5.T5Config)
    fitted = recipe in ("instruction_tune", "expert", "multitask")  # built_in_base.gin
    lengths = {"inputs": 96, "targets": 32} if fitted else {"inputs": 256, "targets": 64}
    assert gin_flags.macro("TASK_FEATURE_LENGTHS") == lengths  # fitted to held_in_topic


@pytest.mark.parametrize("recipe", ["instruction_tune", "expert", "multitask"])
def test_built_in_base_recipe_and_t5x_values_back(recipe):
    """The fine-tuning recipes of the built-in bases: lr 0.02 decayed over DECAY_STEPS,
    dropout 0; the flags in built_in_base.gin's header restore T5X's 1e-3 / 0.1."""
    import gin

    from jaxmerge.cli import gin_flags

    files = ["gin_configs/models/t5_tiny.gin", f"gin_configs/runs/{recipe}.gin"]
    required = ["MODEL_DIR = '/m'", "TRAIN_STEPS = 3", "INITIAL_CHECKPOINT_PATH = '/c'"]
    required.append("MIXTURE_OR_TASK_NAME = 'jaxmerge_held_in_topic'")
    gin_flags.parse(files, [*required, "DECAY_STEPS = 100"])
    assert gin_flags.macro("MODEL").dropout_rate == 0.0
    lr = gin.query_parameter("train_script.train.learning_rate_fn").scoped_configurable_fn()
    got = [float(lr(s)) for s in (0, 49, 75, 100, 200)]
    assert got == pytest.approx([0.0004, 0.02, 0.02 * (1 - 0.9 / 2), 0.002, 0.002])
    t5x = [
        "train_script.train.learning_rate_fn = @train_script.constant()",
        "train_script.constant.base_learning_rate = 0.001",
        "DROPOUT_RATE = 0.1",
    ]
    gin_flags.parse(files, [*required, *t5x])
    assert gin_flags.macro("MODEL").dropout_rate == 0.1
    lr = gin.query_parameter("train_script.train.learning_rate_fn").scoped_configurable_fn()
    assert float(lr(0)) == float(lr(1000)) == pytest.approx(0.001)


def test_restore_from_hugging_face_directory(tmp_path):
    """A Flan-T5-style safetensors directory can be INITIAL_CHECKPOINT_PATH."""

    from safetensors.numpy import save_file

    from jaxmerge.models import hf_t5

    p = params.unbox(t5.init_params(TINY, jax.random.key(6)))
    flat = {k: np.asarray(v) for k, v in params.flatten(p).items()}
    save_file(hf_t5.to_hf(TINY, flat), str(tmp_path / "model.safetensors"))
    hf_config = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_heads": 2, "num_layers": 1}
    hf_config.update(vocab_size=384, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    restored, step, _ = training.restore_checkpoint(tmp_path)
    assert step == 0
    for name, value in params.flatten(restored).items():
        np.testing.assert_array_equal(value, flat[name], err_msg=name)


def test_model_parallel_mesh_shards_the_state_and_trains_as_data_parallel(tmp_path):
    from jaxmerge import sharding

    cfg = training.DatasetConfig("jaxmerge_held_in_topic", LENGTHS, batch_size=8, seed=1)
    model_parallel = sharding.Partitioner(num_partitions=2)
    mesh = model_parallel.mesh()
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    abstract = params.flatten(
        params.unbox(jax.eval_shape(lambda: t5.init_params(TINY, jax.random.key(0))))
    )
    placed = model_parallel.param_shardings(mesh, abstract)
    assert placed["encoder/layers_0/mlp/wi_0/kernel"].spec == jax.sharding.PartitionSpec(
        None, "model"
    )
    assert placed["decoder/logits_dense/kernel"].spec == jax.sharding.PartitionSpec(None, "model")

    def run(name, partitioner):
        training.train(
            model=TINY,
            model_dir=str(tmp_path / name),
            train_dataset_cfg=cfg,
            total_steps=3,
            learning_rate_fn=training.constant(0.01),
            save_period=2,
            partitioner=partitioner,
        )
        return params.flatten(training.restore_checkpoint(tmp_path / name / "checkpoint_3")[0])

    sharded, replicated = run("mp", model_parallel), run("dp", None)
    for name in replicated:
        np.testing.assert_allclose(sharded[name], replicated[name], atol=2e-6, err_msg=name)
    # Resuming restores the sharded state (parameters and Adafactor's) from checkpoint_2.
    resumed = {}
    for name, partitioner in (("mp", model_parallel), ("dp", None)):
        shutil.rmtree(tmp_path / name / "checkpoint_3")
        resumed[name] = run(name, partitioner)
    for name in replicated:
        np.testing.assert_allclose(resumed["mp"][name], resumed["dp"][name], atol=2e-6)


def test_model_parallel_mesh_refuses_a_large_replicated_parameter():
    from jaxmerge import sharding
    from jaxmerge.errors import InputError

    no_rules = sharding.Partitioner(num_partitions=2, logical_axis_rules=(), min_sharded_bytes=1)
    abstract = params.flatten(
        params.unbox(jax.eval_shape(lambda: t5.init_params(TINY, jax.random.key(0))))
    )
    with pytest.raises(InputError, match="replicated on every device"):
        no_rules.param_shardings(no_rules.mesh(), abstract)
    with pytest.raises(InputError, match="num_partitions=3 does not divide the 8 devices"):
        sharding.Partitioner(num_partitions=3).mesh()


def test_mesh_gin_files_parse():
    from jaxmerge import sharding
    from jaxmerge.cli import gin_flags

    required = ["MODEL_DIR = '/m'", "TRAIN_STEPS = 3", "MIXTURE_OR_TASK_NAME = 'jaxmerge_pretrain'"]
    for mesh, partitions in (("data_parallel", 1), ("model_parallel", 4)):
        files = ["gin_configs/models/t5_tiny.gin", "gin_configs/runs/pretrain.gin"]
        files.append(f"gin_configs/mesh/{mesh}.gin")
        gin_flags.parse(files, [*required, "NUM_PARTITIONS = 4"])
        import gin

        partitioner = gin.get_configurable(sharding.Partitioner)()
        assert partitioner.num_partitions == partitions
