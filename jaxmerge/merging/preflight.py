"""Checks a merge passes before it reads any weights, so bad input fails fast and clearly.

- `check_config(config)`: the flags alone, before any file is opened: the method and the
  formats exist; hyperparameters lie in the method's ranges (`METHODS[m].ranges`, then a
  dry run of the method on tiny abstract arrays for the constraints between them); weights
  are finite; experts are distinct; the output can be written, holds no input and lies in
  none.
- `check_inputs(config, base, experts)`: the opened checkpoints' metadata: none is empty,
  and Hugging Face `config.json` files describe one architecture.
- `check_shared_base(config, base, experts)`: a few thousand values of a few parameters:
  each expert is plausibly a fine-tune of the base, not an unrelated model.

Every failure is an InputError (exit status 2) whose one line names the flag or the file,
the parameter, and what is wrong.
"""

import json
import math
import os
import pathlib
import re
import tempfile
from numbers import Integral, Real

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge import checkpoints
from jaxmerge.errors import CheckpointError, InputError
from jaxmerge.merging.config import CHOICES
from jaxmerge.methods import MergeMethod, get_method

# Hugging Face config.json keys that fix the architecture: base and experts must agree.
ARCHITECTURE_KEYS = (
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "d_model",
    "n_embd",
    "intermediate_size",
    "d_ff",
    "num_hidden_layers",
    "num_layers",
    "num_decoder_layers",
    "n_layer",
    "num_attention_heads",
    "num_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "d_kv",
)
SAMPLE_PARAMETERS = 4  # the largest floating-point matrices
SAMPLE_ELEMENTS = 4096  # per parameter: one contiguous block from its middle
# ‖θᵢ − θ₀‖ / ‖θ₀‖ on the sample. Fine-tuning moves weights by ~1e-3 to 1e-1 of their norm;
# two independent initialisations of one architecture are ~√2 apart.
MAX_RELATIVE_DISTANCE = 1.0
ALLOW_UNRELATED = "pass --allow_unrelated to merge anyway"


def check_config(config) -> dict:
    """Everything the flags alone can get wrong; returns the hyperparameters set."""
    try:
        spec = get_method(config.method)
    except InputError as e:
        raise InputError(f"--method: {e}") from None
    for flag in ("input_format", "output_format", "dtype", "trim"):
        value = getattr(config, flag)
        choices = CHOICES[flag]
        if value is not None and value not in choices:
            raise InputError(f"--{flag}={value!r}: choose from {', '.join(choices)}")
    hparams = config.hparams()
    for name, value in hparams.items():
        interval = spec.ranges.get(name)
        if interval is not None and value not in interval:
            raise InputError(f"--{name}={value!r}: {config.method} needs {name} {interval}")
    _check_experts(config, spec)
    _check_weights(config)
    for flag in ("memory_budget", "max_shard_bytes"):
        value = getattr(config, flag)
        if value is not None and (not isinstance(value, Integral) or value <= 0):
            raise InputError(f"--{flag}={value!r}: give a positive number of bytes")
    if not isinstance(config.seed, Integral):
        raise InputError(f"--seed={config.seed!r}: give an integer")
    _dry_run(config, spec, hparams)
    check_output(config)
    return hparams


def _check_experts(config, spec: MergeMethod) -> None:
    if not config.experts:
        raise InputError("--experts: give at least one expert checkpoint")
    seen: dict[str, str] = {}
    for path in config.experts:
        real = os.path.realpath(path)
        if real in seen:
            also = "" if path == seen[real] else f" (as {seen[real]} too)"
            raise InputError(f"--experts: {path} is listed twice{also}")
        seen[real] = path
    if spec.needs_base and config.base is not None:
        real = os.path.realpath(config.base)
        if real in seen:
            raise InputError(
                f"--experts: {seen[real]} is also the --base (its task vector would be 0)"
            )
    count = len(config.experts)
    if count < spec.min_experts or (spec.max_experts and count > spec.max_experts):
        exactly = spec.max_experts == spec.min_experts
        raise InputError(
            f"--experts: {config.method} needs {'exactly' if exactly else 'at least'} "
            f"{spec.min_experts} expert(s), got {count}"
        )


def _check_weights(config) -> None:
    if config.weights is not None:
        _check_weight_vector(config, "--weights", config.weights)
    for rule in config.weight_rules or ():
        if not isinstance(rule, tuple | list) or len(rule) != 2:
            raise InputError(f"MergeConfig.weight_rules: {rule!r} is not a (regex, weights) pair")
        pattern, weights = rule
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise InputError(f"MergeConfig.weight_rules: bad regex {pattern!r} ({e})") from None
        _check_weight_vector(config, f"MergeConfig.weight_rules[{pattern!r}]", weights)


def _check_weight_vector(config, flag: str, weights) -> None:
    if len(weights) != len(config.experts):
        raise InputError(f"{flag}: {len(weights)} weights for {len(config.experts)} experts")
    for i, w in enumerate(weights):
        if not isinstance(w, Real) or isinstance(w, bool) or not math.isfinite(w):
            raise InputError(f"{flag}: weight {i} is {w!r}; weights must be finite numbers")
    if config.method == "average" and math.fsum(weights) == 0:
        raise InputError(f"{flag}: sum to 0; average divides by Σ wᵢ")


def _dry_run(config, spec: MergeMethod, hparams: dict) -> None:
    """Traces the method on tiny abstract arrays: its own checks on concrete hyperparameters
    (e.g. DELLA's density ± epsilon within (0, 1]) run now, not after files are opened."""
    kwargs = {k: v for k, v in hparams.items() if k != "trim"}
    tensor = jax.ShapeDtypeStruct((2, 2), jnp.float32)
    arrays = {"base": tensor} if spec.needs_base else {}
    if config.weights is not None:
        arrays["weights"] = jax.ShapeDtypeStruct((len(config.weights),), jnp.float32)
    if spec.random:
        arrays["key"] = jax.eval_shape(lambda: jax.random.key(0))
    experts = [tensor] * len(config.experts)
    try:
        jax.eval_shape(lambda e, a: spec.merge_tensor(e, **a, **kwargs), experts, arrays)
    except InputError as e:
        raise InputError(f"merge config: {e}") from None


def output_exists(output: pathlib.Path) -> InputError:
    return InputError(f"--output {output}: exists and is not empty; pass --overwrite to replace it")


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(config) -> None:
    """The output holds no input, lies in none, is not in the way, and can be written."""
    output = pathlib.Path(config.output).resolve()
    for path in [config.base, *config.experts]:
        if path is None:
            continue
        resolved = pathlib.Path(path).resolve()
        if output == resolved or output.is_relative_to(resolved):
            raise InputError(f"--output {output}: lies inside the input {resolved}")
        if resolved.is_relative_to(output):
            raise InputError(
                f"--output {output}: holds the input {resolved}, which writing it would replace"
            )
    if output.exists():
        if not output.is_dir():
            raise InputError(f"--output {output}: exists and is not a directory")
        if not config.overwrite and any(output.iterdir()):
            checkpoints.remove_stale_lock(output)  # of a finished merge killed before cleanup
            if not (output / "manifest.json").is_file():  # a merge's: its run key decides
                raise output_exists(output)
    parent = _nearest_existing(output.parent)  # the staging sibling is made there
    if not parent.is_dir():
        raise InputError(f"--output {output}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".jaxmerge-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(
            f"--output {output}: cannot write in {parent} ({e.strerror or e})"
        ) from None


def check_inputs(config, base, experts) -> None:
    """No checkpoint is empty; Hugging Face config.json files agree on the architecture."""
    readers = ([("base", base)] if base is not None else []) + [
        (f"expert {i}", e) for i, e in enumerate(experts)
    ]
    for label, reader in readers:
        if not reader.params:
            raise CheckpointError(f"{reader.path}: {label} holds no parameters")
    if config.allow_unrelated:
        return
    (ref_label, ref), configs = readers[0], [_hf_config(r.path) for _, r in readers]
    for (label, reader), found in zip(readers[1:], configs[1:], strict=True):
        if configs[0] is None or found is None:
            continue
        for key in ARCHITECTURE_KEYS:
            if key in configs[0] and key in found and configs[0][key] != found[key]:
                raise InputError(
                    f"{reader.path / 'config.json'}: {key}={found[key]!r} but "
                    f"{configs[0][key]!r} in the {ref_label} {ref.path / 'config.json'}: the "
                    f"{label} is another architecture; {ALLOW_UNRELATED}"
                )


def _hf_config(path: pathlib.Path) -> dict | None:
    file = pathlib.Path(path) / "config.json"
    if not file.is_file():
        return None
    try:
        found = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    return found if isinstance(found, dict) else None


def sampled_parameters(reader) -> list[str]:
    """The few parameters sampled: floating-point, matrices first, largest first, by name."""
    floats = [n for n, i in reader.params.items() if jnp.issubdtype(i.dtype, jnp.floating)]
    size = lambda n: int(np.prod(reader.params[n].shape, dtype=np.int64))  # noqa: E731
    ranked = sorted(floats, key=lambda n: (len(reader.params[n].shape) < 2, -size(n), n))
    return ranked[:SAMPLE_PARAMETERS]


def check_shared_base(config, base, experts) -> None:
    """Refuses an expert whose sampled values are implausibly far from the base's.

    For each sampled parameter, d = ‖θᵢ − θ₀‖ / ‖θ₀‖ over one block of at most
    SAMPLE_ELEMENTS entries; an expert is refused when most sampled parameters have
    d > MAX_RELATIVE_DISTANCE (one re-initialised head alone is not enough).
    """
    if base is None or config.allow_unrelated or not get_method(config.method).needs_base:
        return
    names = sampled_parameters(base)
    base_samples = {n: checkpoints.read_sample(base, n, SAMPLE_ELEMENTS) for n in names}
    for i, expert in enumerate(experts):
        distances = {}
        for name in names:
            b = base_samples[name].astype(np.float64)
            e = checkpoints.read_sample(expert, name, SAMPLE_ELEMENTS).astype(np.float64)
            with np.errstate(all="ignore"):
                norm = np.linalg.norm(b)
                distance = np.linalg.norm(e - b) / norm
            if norm > 0 and np.isfinite(distance):  # non-finite values are refused later
                distances[name] = float(distance)
        far = {n: d for n, d in distances.items() if d > MAX_RELATIVE_DISTANCE}
        if far and 2 * len(far) > len(distances):
            worst = max(far, key=far.get)
            raise InputError(
                f"{expert.path}: expert {i} does not look fine-tuned from the base {base.path}: "
                f"parameter {worst!r} is {far[worst]:.2f}× the base's norm away from it on a "
                f"sample (at most {MAX_RELATIVE_DISTANCE:g} expected); {ALLOW_UNRELATED}"
            )
