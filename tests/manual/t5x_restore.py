"""Manual check: T5X's own restore code loads jaxmerge's `t5x` and `orbax` outputs.

T5X is not on PyPI, so this runs against a source checkout of google-research/t5x:

    git clone https://github.com/google-research/t5x /tmp/t5x_src   # (any recent commit)
    PYTHONPATH=.:/tmp/t5x_src .venv/bin/python tests/manual/t5x_restore.py /tmp/t5x_check

A few modules T5X imports at top level but the checkpoint path never calls (airio,
jestimator, tensorboard) are stubbed. The script builds the T5 example network
(t5x/examples/t5/network.py, tiny config) as a T5X EncoderDecoderModel, writes its
parameters with jaxmerge in both formats (step 1000, some bf16), and restores each through
`t5x.utils.create_checkpoint_manager_and_restore` (what train.py, infer.py and eval.py call),
with `use_orbax` True (T5X's default) and False (T5X's legacy manager, which reads only
msgpack checkpoints, so it refuses the `orbax` output as it refuses T5X's own Orbax ones):
- inference: no optimizer, `RestoreCheckpointConfig(path=OUT/checkpoint_1000, mode='specific')`;
- fine-tuning: Adafactor, plus `assignment_map=((r'state/param_states.*', None),)` and
  `fallback_to_scratch=True` (the gin lines in docs/checkpoints.md).
Every restored parameter must equal what was written, bit for bit, on T5X's mesh of 8 CPU
devices; fine-tuning without the assignment_map must be refused (no optimizer state).
"""

import functools
import importlib.abc
import importlib.machinery
import os
import sys
import types
from unittest import mock

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

_STUBBED = {"airio", "jestimator", "tensorboard"}


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in _STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__, module.__name__ = [], spec, spec.name
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Stubs())
sys.modules["cached_property"] = types.SimpleNamespace(cached_property=functools.cached_property)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
from flax import traverse_util  # noqa: E402
from t5x import adafactor, models, partitioning, utils  # noqa: E402
from t5x.examples.t5 import network  # noqa: E402

from jaxmerge import checkpoints  # noqa: E402
from jaxmerge.checkpoints import ParamInfo  # noqa: E402

INPUT_SHAPES = {"encoder_input_tokens": (8, 16), "decoder_input_tokens": (8, 8)}


def make_model(optimizer_def):
    config = network.T5Config(
        vocab_size=64, emb_dim=16, num_heads=8, num_encoder_layers=2, num_decoder_layers=2,
        head_dim=2, mlp_dim=32, mlp_activations=("gelu", "linear"), dropout_rate=0.0,
    )  # fmt: skip
    vocabulary = seqio.PassThroughVocabulary(size=64)
    return models.EncoderDecoderModel(
        network.Transformer(config), vocabulary, vocabulary, optimizer_def=optimizer_def
    )


def written_params():
    """Random parameters in the model's own tree, the MLP kernels in bfloat16."""
    model = make_model(None)
    variables = model.get_initial_variables(jax.random.PRNGKey(0), INPUT_SHAPES)
    flat = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
    rng = np.random.default_rng(0)
    out = {}
    for name, value in flat.items():
        array = rng.standard_normal(value.shape).astype(np.float32)
        out[name] = array.astype(ml_dtypes.bfloat16) if "/mlp/" in name else array
    return out


def restore(path, *, finetune: bool, use_orbax: bool, assignment_map: bool = True):
    optimizer_def = adafactor.Adafactor(0.1) if finetune else None
    model = make_model(optimizer_def)
    partitioner = partitioning.PjitPartitioner(
        num_partitions=2, logical_axis_rules=partitioning.standard_logical_axis_rules()
    )
    initializer = utils.TrainStateInitializer(
        optimizer_def=optimizer_def,
        init_fn=model.get_initial_variables,
        input_shapes=INPUT_SHAPES,
        partitioner=partitioner,
    )
    extra = {}
    if finetune and assignment_map:
        extra = dict(assignment_map=((r"state/param_states.*", None),), fallback_to_scratch=True)
    config = utils.RestoreCheckpointConfig(path=str(path), mode="specific", **extra)
    train_state, _ = utils.create_checkpoint_manager_and_restore(
        initializer, partitioner, config, str(path), jax.random.PRNGKey(1), use_orbax=use_orbax
    )
    return train_state


def check(label, params, expect_fail, path, finetune, use_orbax, **kwargs) -> int:
    """1 if the outcome is not the expected one (restored bit-exactly, or refused)."""
    try:
        state = restore(path, finetune=finetune, use_orbax=use_orbax, **kwargs)
    except Exception as e:
        line = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if expect_fail:
            print(f"ok   {label}: refused as expected: {line}")
        else:
            print(f"FAIL {label}: {line}")
        return 0 if expect_fail else 1
    if expect_fail:
        print(f"FAIL {label}: restored, but T5X was expected to refuse it")
        return 1
    got = traverse_util.flatten_dict(state.params, sep="/")
    assert set(got) == set(params), label
    for name, array in params.items():
        restored = np.asarray(got[name])
        assert restored.dtype == array.dtype, (label, name, restored.dtype)
        assert restored.tobytes() == array.tobytes(), (label, name)
    assert int(state.step) == 1000, (label, state.step)
    shardings = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
    print(f"ok   {label}: {len(got)} params bit-equal, step {int(state.step)}, specs {shardings}")
    return 0


def main(root):
    params = written_params()
    infos = {n: ParamInfo(a.shape, a.dtype) for n, a in params.items()}
    failures = 0
    for fmt in ("t5x", "orbax"):
        writer = checkpoints.create(f"{root}/{fmt}", fmt, infos, step=1000, overwrite=True)
        for name, array in params.items():
            writer.write(name, array)
        path = writer.finalize()
        for finetune in (False, True):
            for use_orbax in (True, False):
                label = f"{fmt:5s} {'fine-tune' if finetune else 'inference'} use_orbax={use_orbax}"
                expect_fail = fmt == "orbax" and not use_orbax  # T5X's legacy manager: msgpack only
                failures += check(label, params, expect_fail, path, finetune, use_orbax)
        label = f"{fmt:5s} fine-tune without the assignment_map"
        failures += check(label, params, True, path, True, True, assignment_map=False)
    return 1 if failures else 0


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend with 8 CPU devices
    sys.exit(main(sys.argv[1]))
