"""`jaxmerge study`: a micro grid end to end, resumed after a kill, the report from the
table alone, and grids that cannot run."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from jaxmerge.errors import InputError
from jaxmerge.study import config as study_config
from jaxmerge.study import table
from tests.conftest import REPO_ROOT
from tests.xla_flags import TEST_XLA_FLAGS

MICRO = "gin_configs/study/micro.gin"


def _table(directory: pathlib.Path) -> list[dict]:
    rows = table.read_table(directory / "results.csv")
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    """The micro grid, run once for the module: (output, completed process)."""
    out = tmp_path_factory.mktemp("study")
    result = _cli("study", f"--gin_file={MICRO}", "--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def _env():
    """This checkout's package, on one CPU device: a study is many small trainings, which
    the 8 fake devices of the other tests would only slow down. At XLA's default
    optimization level, unlike the other tests (tests/xla_flags.py): a study runs its
    programs far more than it compiles them, and the micro grid took 5.3 min at LLVM's
    lowest level against 3.1 min at the default."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    flags = env.get("XLA_FLAGS", "").split()
    kept = [f for f in flags if "host_platform_device_count" not in f and f != TEST_XLA_FLAGS]
    env["XLA_FLAGS"] = " ".join(kept)
    return env


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "jaxmerge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        stdin=subprocess.DEVNULL,
    )


def test_micro_grid_gives_table_report_and_figures(micro_study):
    out, result = micro_study
    rows = table.read_table(out / "results.csv")
    config = study_config.StudyConfig(
        sizes=("nano", "micro"), num_experts=(1, 2), methods=("average", "ties", "learned"),
        categories=("sentiment", "topic"),
    )  # fmt: skip
    cells = {(r["size"], r["base"], r["num_experts"], r["seed"], r["method"]) for r in rows}
    # 2 sizes x 2 bases x 2 expert counts x 1 seed x (3 methods + multitask)
    assert len(cells) == 2 * 2 * 2 * 1 * 4
    for r in rows:
        experts = r["experts"].split("+")
        assert len(experts) == r["num_experts"]
        assert tuple(experts) == study_config.expert_subset(config.categories, len(experts), 0)
        if r["kind"] == "held_in":
            assert r["category"] in experts
    assert {r["kind"] for r in rows} == {"held_in", "held_out"}
    assert (out / "results.parquet").stat().st_size > 0
    report = (out / "report.md").read_text()
    for n in range(1, 6):
        assert f"**{n}." in report
    for name in ("held_in_vs_size", "held_out_vs_size", "held_in_vs_experts"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{name}.png" in report
    assert "experts at the bar" in result.stdout  # the quality check, printed
    assert "report:" in result.stdout and "| size" in result.stdout  # the console summary
    study = json.loads((out / "study.json").read_text())
    assert set(study["quality"]) == {"nano", "micro"}


def test_study_resumes_after_kill_with_the_same_table(micro_study, tmp_path):
    out, _ = micro_study
    work = tmp_path / "study"
    shutil.copytree(out, work)
    finished = sorted((work / "cells").rglob("*.json"))
    for path in finished[len(finished) // 2 :]:  # as if killed before these cells ended
        path.unlink()
    (work / "results.csv").unlink()
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxmerge", "study", f"--gin_file={MICRO}", "--output", work],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 300
    for line in process.stdout:  # kill -9 once a cell is computed (not cached)
        if line.startswith("  [") and "(cached)" not in line and " s;" in line:
            break
        assert time.monotonic() < deadline
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    result = _cli("study", f"--gin_file={MICRO}", "--output", work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 to make (all cached)" in result.stdout
    assert "(cached)" in result.stdout
    assert _table(work) == _table(out)
    again = _cli("study", f"--gin_file={MICRO}", "--output", work)  # everything cached
    computed = [x for x in again.stdout.splitlines() if x.startswith("  [") and "(cached)" not in x]
    assert again.returncode == 0 and not computed
    assert _table(work) == _table(out)


def test_report_is_rebuilt_from_the_table_alone(micro_study, tmp_path):
    out, _ = micro_study
    shutil.copy(out / "results.csv", tmp_path / "results.csv")
    result = _cli("study", "--output", tmp_path, "--report_only", timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.md").exists()
    assert (tmp_path / "figures" / "held_in_vs_size.png").exists()
    assert not (tmp_path / "models").exists()  # nothing was run


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ("average", "fancy")}, "StudyConfig.methods: unknown method 'fancy'"),
        ({"sizes": ("nano", "gigantic")}, "StudyConfig.sizes: unknown size 'gigantic'"),
        ({"categories": ("sentiment", "poetry")}, "unknown held-in category 'poetry'"),
        ({"held_out": "jaxmerge_no_such_task"}, "StudyConfig.held_out: unknown task"),
        ({"num_experts": (2, 9)}, "StudyConfig.num_experts: 9 experts"),
        ({"bases": ("chat",)}, "StudyConfig.bases: unknown base 'chat'"),
        ({"learned_space": "weights"}, "StudyConfig.learned_space: 'weights': choose from"),
    ],
)
def test_bad_grids_are_refused_in_one_line(change, message):
    import dataclasses

    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        study_config.check(dataclasses.replace(study_config.StudyConfig(), **change))


def test_bad_grid_exits_2_before_any_work(tmp_path):
    result = _cli(
        "study", f"--gin_file={MICRO}", "--output", tmp_path, "--methods", "average", "fancy",
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[-1]]
        and "unknown method 'fancy'" in result.stderr
    )
    assert not (tmp_path / "models").exists()


class _MeanEvaluator:
    """Scores a tree by how close the mean of its first tensor is to 0.25 (one task)."""

    task_names = ("jaxmerge_topic_news",)

    def evaluate(self, tree):
        import numpy as np

        mean = float(np.mean(tree["a"]["kernel"]))
        return {"jaxmerge_topic_news": {"accuracy": 100.0 - 100.0 * abs(mean - 0.25)}}


@pytest.mark.parametrize("space", study_config.LEARNED_SPACES)
def test_learned_cell_reports_the_lambdas_it_merged(space):
    """θ = θ₀ + Σᵢ λᵢ τᵢ with the λᵢ the cell reports, in either space; "reallocate" keeps
    task arithmetic's total k·λ."""
    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from jaxmerge.study import cells

    base = {"a/kernel": jnp.zeros((3, 2))}
    experts = {
        c: {"a/kernel": jnp.full((3, 2), v)} for c, v in (("topic", 1.0), ("sentiment", -0.5))
    }
    arena = types.SimpleNamespace(base="pretrained", base_tree=base, expert_trees=experts)
    cell = cells.Cell("nano", "pretrained", 2, 0, ("topic", "sentiment"), "learned")
    config = dataclasses.replace(
        study_config.StudyConfig(), learned_space=space, learned_generations=3, learned_popsize=4
    )
    tree, setting, score = cells._learned(
        cell, arena, _MeanEvaluator(), ["jaxmerge_topic_news"], {"jaxmerge_topic_news": 50.0},
        config, start_lam=0.4,
    )  # fmt: skip
    lambdas = setting["lambdas"]
    want = 1.0 * lambdas["topic"] - 0.5 * lambdas["sentiment"]
    np.testing.assert_allclose(np.asarray(tree["a"]["kernel"]), want, atol=1e-3)
    if space == "reallocate":
        assert sum(lambdas.values()) == pytest.approx(2 * 0.4, abs=1e-3)
        assert all(x >= 0 for x in lambdas.values())
    assert score == pytest.approx((100.0 - 100.0 * abs(want - 0.25)) / 50.0, abs=1e-3)


def test_expert_subsets_are_nested_and_seeded():
    categories = ("a", "b", "c", "d", "e", "f", "g", "h")
    for seed in (0, 1):
        subsets = [study_config.expert_subset(categories, k, seed) for k in (2, 4, 6, 8)]
        for small, large in zip(subsets, subsets[1:], strict=False):
            assert large[: len(small)] == small
        assert sorted(subsets[-1]) == list(categories)
    assert study_config.expert_subset(categories, 4, 0) != study_config.expert_subset(
        categories, 4, 1
    )


def test_demo_bases_are_rebuilt_by_their_recipe(tmp_path):
    """launch/demo_bases.sh makes what the demo ships (here with a few steps)."""
    from jaxmerge import checkpoints

    env = _env() | {"SIZES": "nano", "PT_STEPS": "3", "IT_STEPS": "2", "PYTHON": sys.executable}
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # two trainings of a few steps: compiling is the cost
    result = subprocess.run(
        ["bash", REPO_ROOT / "launch" / "demo_bases.sh", tmp_path / "bases"],
        capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shipped = REPO_ROOT / "assets" / "demo_bases" / "nano"
    for base, step in (("pretrained", 3), ("instruction_tuned", 5)):
        built = tmp_path / "bases" / "nano" / base / f"checkpoint_{step}"
        assert not (built / "jaxmerge_optimizer_state.msgpack").exists()
        assert (built.parent / "train_stats.json").exists()
        (original,) = (shipped / base).glob("checkpoint_*")
        with checkpoints.open(built) as new, checkpoints.open(original) as old:
            assert {n: i.shape for n, i in new.params.items()} == {
                n: i.shape for n, i in old.params.items()
            }
    assert not (tmp_path / "bases" / ".work").exists()


@pytest.mark.parametrize(
    "gin_file", sorted(p.name for p in (REPO_ROOT / "gin_configs/study").glob("*.gin"))
)
def test_every_study_gin_gives_a_grid_that_can_run(gin_file, tmp_path):
    """The demo's, the tests' and the reports' grids parse and pass the checks (the demo's
    shipped bases included), without running them. A grid that asks for `BASES` (bases
    built beforehand) gets a directory with a checkpoint_N for every size and base."""
    import argparse

    from jaxmerge.cli import study as study_cli

    for model_gin in (REPO_ROOT / "gin_configs/models").glob("t5_*.gin"):
        for base in study_config.BASES:
            (tmp_path / model_gin.stem.removeprefix("t5_") / base / "checkpoint_1").mkdir(
                parents=True
            )
    flags = {n: None for n in (*study_cli.LIST_FLAGS, "categories", "max_examples")}
    args = argparse.Namespace(
        gin_file=[f"gin_configs/study/{gin_file}"], gin_bindings=[f"BASES = '{tmp_path}'"], **flags
    )
    config = study_cli.config_from(args)
    study_config.check(config)
    assert config.sizes and config.methods
