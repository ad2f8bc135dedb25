"""The micro ladder: launch/local_experts.sh builds one size's whole set, then it is scored."""

import json
import os
import pathlib
import subprocess
import sys

from jaxmerge import model_set

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_models_layout():
    names = [m.name for m in model_set.models("/x", ["topic"])]
    assert names == [
        "base/pretrained",
        "base/instruction_tuned",
        "expert/pretrained/topic",
        "multitask/pretrained",
        "expert/instruction_tuned/topic",
        "multitask/instruction_tuned",
    ]


def test_majority_baseline_is_the_most_common_answer():
    assert model_set.majority_baseline("jaxmerge_topic_news") < 40  # 5 topics
    assert 40 <= model_set.majority_baseline("jaxmerge_word_sense_topic") <= 60  # yes / no


def test_expert_quality_halfway_bar():
    row = dict(role="expert", base="pretrained", category="topic", kind="held_in")
    rows = [
        {**row, "model": "e", "task": "jaxmerge_topic_news", "task_category": "topic",
         "accuracy": 70.0, "majority": 40.0},
        {**row, "model": "e", "task": "jaxmerge_topic_question", "task_category": "topic",
         "accuracy": 69.0, "majority": 40.0},
        {**row, "model": "e", "task": "jaxmerge_mc_pet", "task_category": "multiple_choice_qa",
         "accuracy": 0.0, "majority": 30.0},
    ]  # fmt: skip
    (quality,) = model_set.expert_quality(rows)
    assert quality["halfway"] == 70.0 and quality["accuracy"] == 69.5
    assert [d["met"] for d in quality["datasets"]] == [True, False] and not quality["met"]


def test_micro_ladder_builds_and_scores_end_to_end(tmp_path):
    """Every run of one size through the launcher (one category, its expert and the
    multitask baseline 2 at a time, two generalists, a few steps), then scored. Quality is
    not asserted here (benchmarks/)."""
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PT_STEPS="3", IT_STEPS="2", FT_STEPS="2", MT_STEPS="2", WARMUP_STEPS="0",
        CATEGORIES="topic", JOBS="2", SCORE_MAX_EXAMPLES="2",
        GENERALISTS="topic sentiment", GEN_STEPS="2", GEN_TRUNK="2",
        IT_MIXTURE="jaxmerge_instructions_with_replay",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
    )  # fmt: skip
    cmd = ["bash", str(ROOT / "launch/local_experts.sh"), str(tmp_path / "set"), "nano"]
    first = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    assert first.returncode == 0, first.stderr[-3000:]
    for m in model_set.models(tmp_path / "set", ["topic"]):
        assert model_set.latest_checkpoint(m.directory) is not None, m.name
    quality = json.loads((tmp_path / "set" / "quality.json").read_text())
    models = {r["model"] for r in quality["rows"]}
    assert len(models) == 6
    tasks = {r["task"] for r in quality["rows"] if r["model"] == "base/pretrained"}
    assert len(tasks) == 20  # 16 held-in, 4 held-out
    assert quality["summary"]["experts_total"] == 2
    it_config = (tmp_path / "set/instruction_tuned/config.gin").read_text()
    assert "jaxmerge_instructions_with_replay" in it_config
    assert all(r["tokens"] > 0 and r["seconds"] > 0 for r in quality["rows"])
    assert "| expert/pretrained/topic |" in first.stdout
    trunk = tmp_path / "set" / "generalists/trunk/checkpoint_5"  # PT_STEPS + GEN_TRUNK
    assert trunk.is_dir()
    for c in ["topic", "sentiment"]:  # the Recycle pool, tilted towards c, from the trunk
        generalist = tmp_path / "set" / "generalists/pretrained" / c
        assert model_set.latest_checkpoint(generalist).name == "checkpoint_7"

    recycle = subprocess.run(
        [sys.executable, "-m", "benchmarks.recycle", str(tmp_path / "set"), "--objective",
         "topic_news", "sentiment_message", "--max_examples", "2", "--generations", "1",
         "--popsize", "2"],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert recycle.returncode == 0, recycle.stderr[-3000:]
    record = json.loads((tmp_path / "set/recycle/topic_news+sentiment_message.json").read_text())
    merges = [r["merge"] for r in record["rows"]]
    assert merges[:2] == ["input sentiment", "input topic"]
    assert merges[2:] == ["uniform", "greedy", "optimized"]
    assert "bar met" in recycle.stdout or "bar not met" in recycle.stdout


FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for python: records the training command and writes its final checkpoint.
echo "$*" >>"$COMMANDS"
for arg; do
  case $arg in
    --gin.MODEL_DIR=*) dir=${arg#*=} ;;
    --gin.TRAIN_STEPS=*) steps=${arg#*=} ;;
  esac
done
mkdir -p "${dir//\'/}/checkpoint_$steps"  # the gin string's quotes removed
"""


def launch_with_stand_in(tmp_path, size, **env):
    """Runs launch/local_experts.sh OUT SIZE with python replaced by a stand-in that only
    writes the checkpoint each run would end with: (the finished process, OUT, each
    training command's --gin.NAME=VALUE flags, quotes removed)."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    commands = tmp_path / f"{size}.commands"
    env = dict(os.environ, PYTHON=str(fake), COMMANDS=str(commands), SCORE="0", **env)
    out = tmp_path / size
    cmd = ["bash", str(ROOT / "launch/local_experts.sh"), str(out), size]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    lines = commands.read_text().splitlines() if commands.exists() else []
    gin_flags = [[a.split("=", 1) for a in ln.split() if a.startswith("--gin.")] for ln in lines]
    return run, out, [{name: value.strip("'") for name, value in f} for f in gin_flags]


def launcher_runs(tmp_path, size):
    """{model dir: (TRAIN_STEPS, mixture)} of every run launch/local_experts.sh starts for
    SIZE with its default budgets."""
    run, out, commands = launch_with_stand_in(tmp_path, size)
    assert run.returncode == 0, run.stderr[-3000:]
    return {
        f["--gin.MODEL_DIR"].removeprefix(f"{out}/"): (
            int(f["--gin.TRAIN_STEPS"]),
            f.get("--gin.MIXTURE_OR_TASK_NAME", "(recipe)"),
        )
        for f in commands
    }


def test_ladder_takes_ready_bases(tmp_path):
    """BASES_FROM: the shipped nano bases are linked, not trained; experts start from them,
    with one category's own budget (FT_STEPS_<category>). (That a run really starts from
    its INITIAL_CHECKPOINT_PATH, the micro ladder above shows.)"""
    bases = ROOT / "assets/demo_bases"
    before = sorted(p.relative_to(bases) for p in bases.rglob("*"))
    run, out, commands = launch_with_stand_in(
        tmp_path, "nano", BASES_FROM=str(bases), FT_STEPS="2", MT_STEPS="2",
        FT_STEPS_topic="3", CATEGORIES="topic",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    runs = {f["--gin.MODEL_DIR"].removeprefix(f"{out}/"): f for f in commands}
    assert sorted(runs) == [
        "experts/instruction_tuned/topic", "experts/pretrained/topic",
        "multitask/instruction_tuned", "multitask/pretrained",
    ]  # fmt: skip
    for base, step in (("pretrained", 2000), ("instruction_tuned", 5000)):
        assert (out / base).resolve() == bases / "nano" / base
        for name, steps in ((f"experts/{base}/topic", 3), (f"multitask/{base}", 2)):
            init = pathlib.Path(runs[name]["--gin.INITIAL_CHECKPOINT_PATH"])
            assert init.resolve() == bases / "nano" / base / f"checkpoint_{step}"
            assert runs[name]["--gin.TRAIN_STEPS"] == str(step + steps)
    assert sorted(p.relative_to(bases) for p in bases.rglob("*")) == before

    nowhere = tmp_path / "nowhere"
    (tmp_path / "bad").mkdir()
    bad, _, commands = launch_with_stand_in(tmp_path / "bad", "nano", BASES_FROM=str(nowhere))
    assert bad.returncode == 2 and not commands
    assert bad.stderr.strip().splitlines() == [
        f"error: BASES_FROM={nowhere}: no {nowhere}/nano/pretrained/checkpoint_N"
    ]


def test_ladder_budgets_per_size(tmp_path):
    """The launcher's default budgets (docs/models_tasks_training.md, "The size ladder"):
    pre-training 2000 steps at every size, instruction tuning 12000 at nano, 9000 at
    micro and 6000 at tiny and milli; milli's experts 300 steps (paraphrase 1200,
    closed-book 900) from bases instruction-tuned with pre-training replay."""
    for size, it_steps in (("nano", 12000), ("micro", 9000), ("tiny", 6000)):
        (tmp_path / size).mkdir()
        runs = launcher_runs(tmp_path / size, size)
        it_end = 2000 + it_steps
        assert runs["pretrained"] == (2000, "jaxmerge_pretrain")
        assert runs["instruction_tuned"] == (it_end, "jaxmerge_instructions")
        assert runs["experts/pretrained/paraphrase"] == (3000, "jaxmerge_held_in_paraphrase")
        assert runs["experts/instruction_tuned/topic"] == (it_end + 1000, "jaxmerge_held_in_topic")
        assert runs["multitask/instruction_tuned"] == (it_end + 1000, "(recipe)")
    milli = launcher_runs(tmp_path, "milli")
    assert len(milli) == 20  # 2 bases, 8 experts and a multitask baseline from each
    assert milli["pretrained"] == (2000, "jaxmerge_pretrain")
    assert milli["instruction_tuned"] == (8000, "jaxmerge_instructions_with_replay")
    for base, start in (("pretrained", 2000), ("instruction_tuned", 8000)):
        assert milli[f"experts/{base}/topic"][0] == start + 300
        assert milli[f"experts/{base}/closed_book_qa"][0] == start + 900
        assert milli[f"experts/{base}/paraphrase"][0] == start + 1200
        assert milli[f"multitask/{base}"][0] == start + 1200


def test_ladder_sizes_are_gin_files_spanning_10x():
    import jax

    from jaxmerge.cli import gin_flags
    from jaxmerge.models import t5

    def count(name):
        gin_flags.parse([f"gin_configs/models/t5_{name}.gin"], [])
        config = gin_flags.macro("MODEL")
        abstract = jax.eval_shape(lambda: t5.init_params(config, jax.random.key(0)))
        return sum(x.size for x in jax.tree.leaves(abstract))

    counts = [count(s) for s in model_set.SIZES]
    assert counts == sorted(counts) and counts[-1] >= 10 * counts[0]
