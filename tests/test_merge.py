"""The merge engine end to end: CLI, formats, numpy references, sharding, chunking, resume."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import ml_dtypes
import numpy as np
import pytest

from jaxmerge import checkpoints
from jaxmerge.errors import InputError
from jaxmerge.merging import MergeConfig, merge_checkpoints, parse_bytes
from jaxmerge.methods import merge_trees
from tests.xla_flags import xla_flags

SHAPES = {
    "encoder/layers_0/attention/query/kernel": (16, 8),
    "encoder/layers_0/mlp/wi/kernel": (8, 24),
    "encoder/layers_0/pre_attention_layer_norm/scale": (8,),
    "decoder/logits_dense/kernel": (8, 40),
}


def make_models(seed=0, count=3, dtype=ml_dtypes.bfloat16):
    rng = np.random.default_rng(seed)
    base = {n: rng.standard_normal(s).astype(np.float32).astype(dtype) for n, s in SHAPES.items()}
    experts = [
        {
            n: (v.astype(np.float32) + 0.1 * rng.standard_normal(v.shape)).astype(dtype)
            for n, v in base.items()
        }
        for _ in range(count)
    ]
    return base, experts


def write(path, model, fmt, step=3):
    params = {n: checkpoints.ParamInfo(v.shape, v.dtype) for n, v in model.items()}
    writer = checkpoints.create(path, fmt, params, step=step)
    for name, value in model.items():
        writer.write(name, value)
    return writer.finalize()


def write_all(tmp_path, fmt, base, experts):
    base_path = write(tmp_path / "base", base, fmt)
    expert_paths = [write(tmp_path / f"expert_{i}", e, fmt) for i, e in enumerate(experts)]
    return base_path, expert_paths


def read_all(path) -> dict[str, np.ndarray]:
    with checkpoints.open(path) as reader:
        return {name: reader.read_numpy(name) for name in reader.params}


def numpy_task_arithmetic(base, experts, lam):
    out = {}
    for name, b in base.items():
        b32 = b.astype(np.float32)
        total = sum(e[name].astype(np.float32) - b32 for e in experts)
        out[name] = (b32 + np.float32(lam) * total).astype(b.dtype)
    return out


def numpy_ties_global(base, experts, density, lam):
    """TIES as the paper states it, with the threshold from np.partition over all parameters."""
    taus = [
        {n: e[n].astype(np.float32) - base[n].astype(np.float32) for n in base} for e in experts
    ]
    trimmed = []
    for tau in taus:
        flat = np.abs(np.concatenate([t.ravel() for t in tau.values()]))
        k = int(np.ceil(density * flat.size))
        threshold = np.partition(flat, flat.size - k)[flat.size - k]
        trimmed.append({n: np.where(np.abs(t) >= threshold, t, 0) for n, t in tau.items()})
    out = {}
    for name, b in base.items():
        stack = np.stack([t[name] for t in trimmed])
        sign = np.where(stack.sum(0) >= 0, 1.0, -1.0)
        agree = stack * sign > 0
        mean = np.where(agree, stack, 0).sum(0) / np.maximum(agree.sum(0), 1)
        out[name] = (b.astype(np.float32) + lam * mean).astype(b.dtype)
    return out


@pytest.mark.parametrize("fmt", ["safetensors", "t5x", "orbax"])
def test_cli_ties_matches_numpy_in_every_format(run_cli, tmp_path, fmt):
    base, experts = make_models()
    base_path, expert_paths = write_all(tmp_path, fmt, base, experts)
    out = tmp_path / "merged"
    result = run_cli(
        "merge", "--method", "ties", "--base", base_path, "--experts", *expert_paths,
        "--output", out, "--density", "0.3", "--lam", "0.8", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    final = out / "checkpoint_3" if fmt != "safetensors" else out
    assert checkpoints.detect_format(final) == fmt
    got = read_all(final)
    want = numpy_ties_global(base, experts, 0.3, 0.8)
    for name in SHAPES:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "ties" and len(manifest["inputs"]) == 4
    assert "merge.MergeConfig.density = 0.3" in (out / "config.gin").read_text()


def test_task_arithmetic_matches_numpy_with_gin_run_config(run_cli, tmp_path):
    base, experts = make_models()
    base_path, expert_paths = write_all(tmp_path, "safetensors", base, experts)
    out = tmp_path / "merged"
    result = run_cli(
        "merge",
        "--gin_file", "gin_configs/methods/task_arithmetic.gin",
        "--gin_file", "gin_configs/runs/merge.gin",
        f"--gin.BASE='{base_path}'",
        f"--gin.EXPERTS={[str(p) for p in expert_paths]}",
        f"--gin.OUTPUT_DIR='{out}'",
        "--lam", "0.5",
        cwd=pathlib.Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    got, want = read_all(out), numpy_task_arithmetic(base, experts, 0.5)
    for name in SHAPES:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize(
    "method", ["dare_ties", "della", "model_stock", "average", "ties:tensor", "ties:global"]
)
def test_engine_equals_the_in_memory_merge(tmp_path, method):
    """Same keys from (seed, parameter name): the streaming engine equals merge_trees.

    TIES' thresholds come from the engine's histogram passes (per tensor, or streamed over
    the model), merge_trees' from kth_largest_magnitude: exact both, so equal bit for bit.
    """
    method, _, trim = method.partition(":")
    hparams = {"trim": trim} if trim else {}
    base, experts = make_models(count=2)
    base_path, expert_paths = write_all(tmp_path, "safetensors", base, experts)
    config = MergeConfig(
        method=method,
        base=str(base_path),
        experts=expert_paths,
        output=str(tmp_path / "o"),
        seed=5,
        **hparams,
    )
    got = read_all(merge_checkpoints(config, quiet=True, log=lambda *_: None))
    want = merge_trees(method, experts, base=base, seed=5, **hparams)
    for name in SHAPES:
        np.testing.assert_array_equal(got[name], np.asarray(want[name]), err_msg=name)


def test_tiny_memory_budget_equals_no_budget(tmp_path):
    base, experts = make_models()
    base_path, expert_paths = write_all(tmp_path, "safetensors", base, experts)
    runs = {}
    for label, budget in (("tiny", 1), ("large", 10**10)):
        config = MergeConfig(
            method="ties", base=str(base_path), experts=expert_paths,
            output=str(tmp_path / label), memory_budget=budget,
        )  # fmt: skip
        runs[label] = read_all(merge_checkpoints(config, quiet=True, log=lambda *_: None))
    for name in SHAPES:
        np.testing.assert_array_equal(runs["tiny"][name], runs["large"][name])


# random masks; global histograms; per-tensor ones (on one CPU device host_select's loops
# count them, on 8 devices XLA's scatters)
@pytest.mark.parametrize("method", ["dare_ties", "ties", "ties:tensor"])
def test_eight_devices_give_the_same_bytes_as_one(tmp_path, run_cli, method):
    assert jax.device_count() == 8
    base, experts = make_models()
    base_path, expert_paths = write_all(tmp_path, "safetensors", base, experts)
    method, _, trim = method.partition(":")
    args = ["--method", method, "--base", base_path, "--experts", *expert_paths, "--quiet"]
    args += ["--trim", trim] if trim else []
    eight = run_cli("merge", *args, "--output", tmp_path / "eight")
    assert eight.returncode == 0, eight.stderr
    env = dict(os.environ, XLA_FLAGS=xla_flags(1))
    env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parents[1])
    one = subprocess.run(
        [sys.executable, "-m", "jaxmerge", "merge", *map(str, args), "--output", tmp_path / "one"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "one" / "model.safetensors").read_bytes() == (
        tmp_path / "eight" / "model.safetensors"
    ).read_bytes()


def test_resume_after_a_crash_gives_the_same_bytes(tmp_path, monkeypatch):
    base, experts = make_models()
    base_path, expert_paths = write_all(tmp_path, "t5x", base, experts)

    def config(out):
        return MergeConfig(
            method="dare_linear", base=str(base_path), experts=expert_paths, output=str(out)
        )

    clean = merge_checkpoints(config(tmp_path / "clean"), quiet=True, log=lambda *_: None)
    # Crash after two parameters were written.
    from jaxmerge.checkpoints import t5x

    original = t5x.Writer.write
    calls = {"n": 0}

    def crashing_write(self, name, array):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        return original(self, name, array)

    monkeypatch.setattr(t5x.Writer, "write", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints(config(tmp_path / "resumed"), quiet=True, log=lambda *_: None)
    assert not (tmp_path / "resumed").exists()  # nothing half-written looks finished
    monkeypatch.setattr(t5x.Writer, "write", original)
    messages = []
    resumed = merge_checkpoints(config(tmp_path / "resumed"), quiet=True, log=messages.append)
    assert any("resuming: 2 of 4" in m for m in messages)
    for name in SHAPES:
        np.testing.assert_array_equal(read_all(resumed)[name], read_all(clean)[name])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shape", r"parameter 'decoder/logits_dense/kernel' has shape \(8, 41\) but \(8, 40\)"),
        ("name", r"expert 1 lacks 'decoder/logits_dense/kernel'"),
        ("dtype", r"parameter 'decoder/logits_dense/kernel' is float32 but bfloat16 .*dtype mix"),
    ],
)
def test_mismatched_inputs_exit_2_with_one_line(run_cli, tmp_path, change, message):
    base, experts = make_models(count=2)
    name = "decoder/logits_dense/kernel"
    broken = dict(experts[1])
    if change == "shape":
        broken[name] = np.zeros((8, 41), ml_dtypes.bfloat16)
    elif change == "name":
        broken["decoder/logits_dense/renamed"] = broken.pop(name)
    else:
        broken[name] = broken[name].astype(np.float32)
    base_path = write(tmp_path / "base", base, "safetensors")
    good = write(tmp_path / "e0", experts[0], "safetensors")
    bad = write(tmp_path / "e1", broken, "safetensors")
    result = run_cli(
        "merge", "--method", "ties", "--base", base_path, "--experts", good, bad,
        "--output", tmp_path / "out",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_other_bad_inputs_exit_2(run_cli, tmp_path):
    base, experts = make_models(count=2)
    base_path, expert_paths = write_all(tmp_path, "safetensors", base, experts)
    common = ["--base", base_path, "--output", tmp_path / "out"]
    cases = {
        "missing expert": (["--method", "ties", *common, "--experts", tmp_path / "nope"], "nope"),
        "hparam not taken": (
            ["--method", "task_arithmetic", *common, "--experts", *expert_paths, "--density", ".2"],
            "--density does not apply to task_arithmetic",
        ),
        "duplicate expert": (
            ["--method", "ties", *common, "--experts", expert_paths[0], expert_paths[0]],
            "listed twice",
        ),
        "weights count": (
            ["--method", "ties", *common, "--experts", *expert_paths, "--weights", "1"],
            "--weights: 1 weights for 2 experts",
        ),
        "output inside input": (
            [
                "--method",
                "ties",
                "--base",
                base_path,
                "--experts",
                *expert_paths,
                "--output",
                base_path / "inner",
            ],
            "lies inside the input",
        ),  # fmt: skip
        "unknown method": (["--method", "tie", *common, "--experts", *expert_paths], "tie"),
    }
    for label, (args, message) in cases.items():
        result = run_cli("merge", *args)
        assert result.returncode == 2, (label, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)
        assert message in result.stderr, (label, result.stderr)
    done = run_cli("merge", "--method", "ties", *common, "--experts", *expert_paths)
    assert done.returncode == 0, done.stderr
    again = run_cli("merge", "--method", "ties", *common, "--experts", *expert_paths)
    assert again.returncode == 0 and "already merged" in again.stdout, again.stderr
    other = run_cli("merge", "--method", "ties", "--density", "0.5", *common, "--experts",
                    *expert_paths)  # fmt: skip
    assert other.returncode == 2 and "not empty" in other.stderr, other.stderr
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious").write_text("keep")
    result = run_cli("merge", "--method", "ties", *common, "--experts", *expert_paths)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "out" / "precious").read_text() == "keep"


def test_parse_bytes():
    assert parse_bytes("4GB") == 4 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    with pytest.raises(InputError, match="expected a size"):
        parse_bytes("lots")


@pytest.mark.parametrize("fmt", ["safetensors", "t5x"])
def test_kill_9_midway_then_rerun_gives_the_same_bytes(tmp_path, run_cli, fmt):
    """A real SIGKILL once some parameters are journaled; the re-run resumes and matches."""
    from jaxmerge.checkpoints.staging import JOURNAL, TMP_SUFFIX

    rng = np.random.default_rng(0)
    shapes = {f"layers_{i}/kernel": (256, 256) for i in range(24)}
    base = {n: rng.standard_normal(s).astype(ml_dtypes.bfloat16) for n, s in shapes.items()}
    experts = [
        {n: (v.astype(np.float32) + 0.1).astype(ml_dtypes.bfloat16) for n, v in base.items()}
        for _ in range(2)
    ]
    base_path, expert_paths = write_all(tmp_path, fmt, base, experts)
    args = ["merge", "--method", "dare_ties", "--base", base_path, "--experts", *expert_paths]
    clean = run_cli(*args, "--output", tmp_path / "clean", "--quiet")
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    journal = out.with_name(out.name + TMP_SUFFIX) / JOURNAL
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    command = [sys.executable, "-m", "jaxmerge", *map(str, args), "--output", str(out), "--quiet"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if journal.exists() and len(journal.read_text().splitlines()) >= 4:  # header + 3
                break
            time.sleep(0.005)
        killed = process.poll() is None
        process.kill()
    finally:
        process.wait(timeout=30)
    assert killed, "the merge finished before 3 of its 24 parameters could be seen journaled"
    assert not out.exists()  # nothing half-written looks finished
    rerun = run_cli(*args, "--output", out, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming:" in rerun.stdout
    for clean_file in sorted((tmp_path / "clean").rglob("*")):
        relative = clean_file.relative_to(tmp_path / "clean")
        if clean_file.is_file() and relative.name not in ("manifest.json", "config.gin"):
            assert (out / relative).read_bytes() == clean_file.read_bytes(), relative
