"""`jaxmerge learn` end to end on tiny checkpoints: both paths, the merge on disk, errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from jaxmerge import training
from jaxmerge.cli.main import main
from jaxmerge.evaluation.evaluator import Evaluator
from jaxmerge.models import params, t5
from tests.tiny_t5 import TINY, fine_tune_like

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASK = "jaxmerge_nli_facts"
SMALL = ["--tasks", TASK, "--max_examples", "12", "--batch_size", "8"]
SMALL += ["--inputs_length", "160", "--targets_length", "16"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A base and two fine-tune-like experts (base plus small noise), as T5X checkpoints."""
    root = tmp_path_factory.mktemp("learn_pool")
    tx = training.adafactor(training.constant(0.01))
    base = params.unbox(t5.init_params(TINY, jax.random.key(0)))
    paths = {}
    for i, name in enumerate(["base", "e1", "e2"]):
        tree = fine_tune_like(base, i)
        paths[name] = str(training.save_checkpoint(root / name, 4, tree, tx.init(tree)))
    return paths


def _merged_fitness(summary) -> float:
    """The merged model on disk, evaluated afresh: its accuracy on TASK."""
    tree, _, _ = training.restore_checkpoint(summary["merged"])
    evaluator = Evaluator(
        TINY,
        TASK,
        split="validation",
        batch_size=8,
        max_examples=12,
        task_feature_lengths={"inputs": 160, "targets": 16},
    )
    return evaluator.evaluate(tree)[TASK]["accuracy"]


@pytest.mark.parametrize("search", ["gradient", "cmaes"])
def test_learn_writes_the_merge_it_scored(tmp_path, pool, search):
    out = tmp_path / "out"
    extra = ["--steps", "4", "--eval_period", "2"] if search == "gradient" else []
    extra += ["--generations", "2", "--popsize", "4"] if search == "cmaes" else []
    argv = ["learn", "--base", pool["base"], "--experts", pool["e1"], pool["e2"]]
    argv += ["--output", str(out), "--search", search, *SMALL, *extra]
    assert main(argv) == 0
    summary = json.loads((out / "coefficients.json").read_text())
    assert list(summary["coefficients"]) == ["all"]
    assert len(summary["coefficients"]["all"]) == 2
    assert summary["history"]
    assert summary["fitness"] == _merged_fitness(summary)  # the bytes on disk were scored
    assert not (out / "state").exists()
    mtime = (out / "coefficients.json").stat().st_mtime_ns
    assert main(argv) == 0  # the same run, finished: said so, not redone
    assert (out / "coefficients.json").stat().st_mtime_ns == mtime
    assert main([*argv, "--seed", "3"]) == 2  # another run over it needs --overwrite


def test_ties_preprocessing_writes_the_merge_it_scored(tmp_path, pool):
    """AdaMerging++: coefficients over TIES's τ̃ᵢ; the merge on disk is read from the
    preprocessed checkpoints it wrote, and scores what the learning scored."""
    out = tmp_path / "ties"
    argv = ["learn", "--base", pool["base"], "--experts", pool["e1"], pool["e2"]]
    argv += ["--output", str(out), "--preprocess", "ties", "--density", "0.5", *SMALL]
    argv += ["--steps", "2", "--eval_period", "2"]
    assert main(argv) == 0
    summary = json.loads((out / "coefficients.json").read_text())
    assert summary["fitness"] == _merged_fitness(summary)
    assert len(summary["merged_from"]) == 2
    assert all(p.startswith(str(out / "preprocessed")) for p in summary["merged_from"])
    e1, _, _ = training.restore_checkpoint(pool["e1"])
    kept, _, _ = training.restore_checkpoint(summary["merged_from"][0])
    base, _, _ = training.restore_checkpoint(pool["base"])
    changed = [
        (params.flatten(kept)[n] != params.flatten(base)[n]).mean() for n in params.flatten(e1)
    ]
    assert 0.0 < float(sum(changed) / len(changed)) <= 0.5  # trimmed to half, or fewer


def test_simplex_with_one_checkpoint_gives_weight_one(tmp_path, pool):
    out = tmp_path / "one"
    argv = ["learn", "--experts", pool["e1"], "--space", "simplex", "--output", str(out)]
    argv += [*SMALL, "--search", "cmaes", "--generations", "2", "--popsize", "4"]
    assert main(argv) == 0
    summary = json.loads((out / "coefficients.json").read_text())
    assert summary["coefficients"]["all"] == [1.0]


def _error(*args, capsys=None) -> str:
    """The one line `jaxmerge learn ARGS` writes on stderr as it exits 2: in a process of its
    own, as a user runs it, or with `capsys` in this one (no TensorFlow start-up)."""
    if capsys is not None:
        capsys.readouterr()
        status = main(["learn", *args])
        stderr = capsys.readouterr().err
    else:
        env = {**os.environ, "JAXMERGE_COMPILATION_CACHE": "off"}
        run = subprocess.run(
            [sys.executable, "-m", "jaxmerge", "learn", *args],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
        )  # fmt: skip
        status, stderr = run.returncode, run.stderr
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path, pool, capsys):
    common = ["--base", pool["base"], "--output", str(tmp_path / "bad")]
    line = _error(*common, "--experts", pool["e1"], "--tasks", "jaxmerge_nli_fact")
    assert "no seqio Task or Mixture named 'jaxmerge_nli_fact'" in line
    rule = ["--group_rule", "nothing/.*=x"]
    line = _error(*common, "--experts", pool["e1"], *SMALL, *rule, capsys=capsys)
    assert "--group_rule nothing/.*=x: matches no parameter" in line
    wide = params.unbox(
        t5.init_params(t5.T5Config(**{**TINY.__dict__, "mlp_dim": 32}), jax.random.key(0))
    )
    tx = training.adafactor(training.constant(0.01))
    other = str(training.save_checkpoint(tmp_path / "other", 4, wide, tx.init(wide)))
    line = _error(*common, "--experts", pool["e1"], other, *SMALL, capsys=capsys)
    assert f"{other}: parameter" in line and "has shape" in line
    line = _error(*common, "--experts", pool["e1"], *SMALL, "--preprocess", "trim", capsys=capsys)
    assert "--preprocess='trim': choose from none, ties, dare" in line
    assert not (tmp_path / "bad" / "coefficients.json").exists()


# gradient on a split pool: also tests/test_launch.py, on 2 processes
@pytest.mark.parametrize("search", [pytest.param("gradient", marks=pytest.mark.slow), "cmaes"])
def test_pool_split_over_a_model_axis_learns_the_same(tmp_path, pool, search):
    extra = ["--steps", "2", "--eval_period", "2"] if search == "gradient" else []
    extra += ["--generations", "2", "--popsize", "4"] if search == "cmaes" else []
    argv = ["learn", "--base", pool["base"], "--experts", pool["e1"], pool["e2"]]
    argv += ["--search", search, *SMALL, *extra]
    summaries = []
    for partitions in ("1", "2"):
        out = tmp_path / partitions
        assert main([*argv, "--output", str(out), "--num_partitions", partitions]) == 0
        summaries.append(json.loads((out / "coefficients.json").read_text()))
    replicated, split = summaries
    assert split["fitness"] == pytest.approx(replicated["fitness"], abs=1e-6)
    want = replicated["coefficients"]["all"]
    assert split["coefficients"]["all"] == pytest.approx(want, abs=1e-5)
