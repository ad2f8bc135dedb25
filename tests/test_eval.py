"""`jaxmerge eval` end to end on tiny checkpoints: normalized scores, cache, outputs, errors."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxmerge import training
from jaxmerge.cli.main import main
from jaxmerge.models import params, t5
from tests.tiny_t5 import TINY

TINY_GIN = dataclasses.replace(  # gin_configs/models/t5_tiny.gin
    TINY, emb_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, mlp_dim=128
)
TASKS = ["jaxmerge_sentiment_review", "jaxmerge_nli_facts"]
SMALL = ["--split", "validation", "--max_examples", "6", "--batch_size", "8"]
SMALL += ["--inputs_length", "128", "--targets_length", "16"]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _checkpoint(directory: pathlib.Path, seed: int, config=TINY) -> str:
    tree = params.unbox(t5.init_params(config, jax.random.key(seed)))
    tx = training.adafactor(training.constant(0.01))
    return str(training.save_checkpoint(directory, 3, tree, tx.init(tree)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    return {
        name: _checkpoint(root / name, seed) for seed, name in enumerate(["base", "e", "m1", "m2"])
    }


def _eval(tmp_path, *args, cache=True) -> dict:
    out = tmp_path / "out"
    cache_args = ["--cache_dir", str(tmp_path / "cache")] if cache else ["--no_cache"]
    assert main(["eval", *args, "--output", str(out), *SMALL, *cache_args, "--quiet"]) == 0
    return json.loads((out / "metrics.json").read_text())


def _accuracy(summary, label, task):
    model = next(m for m in summary["models"] if m["label"].split("/")[0] == label)
    return model["metrics"][task]["accuracy"]


def test_normalized_scores_divide_by_the_expert_and_the_base(tmp_path, models):
    summary = _eval(
        tmp_path,
        "--checkpoint",
        models["m1"],
        "--tasks",
        *TASKS,
        "--base",
        models["base"],
        "--expert",
        f"sentiment={models['e']}",
    )
    roles = summary["roles"]
    assert roles["jaxmerge_sentiment_review"] == {
        "kind": "held_in",
        "category": "sentiment",
        "reference": "expert:sentiment",
    }
    assert roles["jaxmerge_nli_facts"] == {
        "kind": "held_out",
        "category": "nli",
        "reference": "base",
    }
    norm = summary["normalized"]["m1/checkpoint_3"]
    task = "jaxmerge_sentiment_review"
    expert = _accuracy(summary, "expert:sentiment", task)
    if expert:
        assert norm["held_in"] == pytest.approx(_accuracy(summary, "m1", task) / expert)
    base = _accuracy(summary, "base", "jaxmerge_nli_facts")
    assert base > 0  # rank classification over 2-3 choices is never 0 on 6 questions here
    assert norm["held_out"] == pytest.approx(_accuracy(summary, "m1", "jaxmerge_nli_facts") / base)
    assert summary["normalized"]["base"]["held_out"] == pytest.approx(1.0)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "metrics.csv", "tensorboard"}
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("model,path,role,task,kind,category,metric,value,normalized")
    assert len(rows) == 1 + 3 * 2  # 3 models x 2 tasks, one metric each
    assert not (tmp_path / "out.jaxmerge-tmp").exists()


def test_several_checkpoints_in_one_run_equal_separate_runs(tmp_path, models):
    both = _eval(
        tmp_path / "both",
        "--checkpoint",
        models["m1"],
        "--checkpoint",
        models["m2"],
        "--tasks",
        *TASKS,
        cache=False,
    )
    for name in ("m1", "m2"):
        alone = _eval(tmp_path / name, "--checkpoint", models[name], "--tasks", *TASKS, cache=False)
        for task in TASKS:
            assert _accuracy(both, name, task) == _accuracy(alone, name, task)


def test_references_come_from_the_cache_and_a_rerun_is_recognized(tmp_path, models, capsys):
    common = ["--tasks", *TASKS, "--base", models["base"], "--cache_dir", str(tmp_path / "c")]
    common += [*SMALL, "--quiet"]
    assert (
        main(["eval", "--checkpoint", models["m1"], "--output", str(tmp_path / "a"), *common]) == 0
    )
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", models["m2"], "--output", str(tmp_path / "b"), *common]) == 0
    )
    log = capsys.readouterr().out
    assert "base: scores from the cache" in log
    assert "m2/checkpoint_3: evaluated" in log
    before = (tmp_path / "b" / "metrics.json").stat().st_mtime_ns
    assert (
        main(["eval", "--checkpoint", models["m2"], "--output", str(tmp_path / "b"), *common]) == 0
    )
    assert "already evaluated" in capsys.readouterr().out
    assert (tmp_path / "b" / "metrics.json").stat().st_mtime_ns == before
    # a different evaluation over a finished output needs --overwrite, and leaves it intact
    other = ["eval", "--checkpoint", models["m1"], "--output", str(tmp_path / "b"), *common]
    assert main(other) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "b" / "metrics.json").stat().st_mtime_ns == before
    assert main([*other, "--overwrite"]) == 0


def test_gin_run_config_with_t5x_macros_and_inferred_model(tmp_path, models):
    out = tmp_path / "gin_out"
    argv = [
        "eval",
        "--gin_file=gin_configs/runs/eval.gin",
        f"--gin.CHECKPOINT_PATH='{models['m1']}'",
        "--gin.MIXTURE_OR_TASK_NAME='jaxmerge_nli_facts'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 16}",
        "--split",
        "validation",
        "--max_examples",
        "6",
        "--no_cache",
        "--quiet",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tasks"] == ["jaxmerge_nli_facts"]
    assert "CHECKPOINT_PATH" in (out / "config.gin").read_text()


def test_a_user_module_registers_its_own_task(tmp_path, models, monkeypatch):
    module = tmp_path / "my_tasks.py"
    module.write_text(
        "import seqio, tensorflow as tf\n"
        "from jaxmerge import tasks\n"
        "from jaxmerge.tasks import metrics\n"
        "def source(split, shuffle_files=False, seed=None):\n"
        "    return tf.data.Dataset.from_tensor_slices(\n"
        "        {'inputs': ['say yes', 'say no'] * 3, 'targets': ['yes', 'no'] * 3})\n"
        "vocab = tasks.vocabulary()\n"
        "feats = {k: seqio.Feature(vocab, add_eos=True) for k in ('inputs', 'targets')}\n"
        "if 'my_echo' in seqio.TaskRegistry.names():\n"
        "    seqio.TaskRegistry.remove('my_echo')\n"
        "seqio.TaskRegistry.add('my_echo',\n"
        "    source=seqio.FunctionDataSource(source, ['validation']),\n"
        "    output_features=feats, preprocessors=[seqio.preprocessors.tokenize,\n"
        "    seqio.preprocessors.append_eos_after_trim], metric_fns=[metrics.exact_match])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    summary = _eval(
        tmp_path,
        "--checkpoint",
        models["m1"],
        "--tasks",
        "my_echo",
        "--module",
        "my_tasks",
        "--base",
        models["base"],
        cache=False,
    )
    assert summary["roles"]["my_echo"] == {
        "kind": "held_out",
        "category": "my_echo",
        "reference": "base",
    }
    assert 0.0 <= _accuracy(summary, "m1", "my_echo") <= 100.0


def test_hugging_face_directory_is_read_with_its_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from safetensors.numpy import save_file

    from jaxmerge.models import hf_t5
    from jaxmerge.tasks import held_in, registry

    gen = held_in.CATEGORIES["sentiment"]["sentiment_review"]
    texts = [
        e["inputs"] + " " + e["targets"]
        for e in registry.examples("sentiment_review", gen, "train")
    ]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts))
    prefix = tmp_path / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=100,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    hf_dir = tmp_path / "flan"
    hf_dir.mkdir()
    (hf_dir / "spiece.model").write_bytes(prefix.with_suffix(".model").read_bytes())
    config = t5.T5Config(**{**TINY.__dict__, "vocab_size": 128})
    flat = {
        k: np.asarray(v)
        for k, v in params.flatten(params.unbox(t5.init_params(config, jax.random.key(3)))).items()
    }
    save_file(hf_t5.to_hf(config, flat), str(hf_dir / "model.safetensors"))
    hf_config = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_heads": 2, "num_layers": 1}
    hf_config.update(vocab_size=128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    (hf_dir / "config.json").write_text(json.dumps(hf_config))
    summary = _eval(tmp_path, "--checkpoint", str(hf_dir), "--tasks", TASKS[0], cache=False)
    assert summary["models"][0]["metrics"][TASKS[0]]["accuracy"] >= 0.0


def _error(tmp_path, *args, capsys=None) -> str:
    """The one line `jaxmerge eval ARGS` writes on stderr as it exits 2. In a process of its
    own, as a user runs it (so that the libraries' start-up noise would show), or with
    `capsys` in this one: the same code path without the 5-8 s of starting TensorFlow."""
    out = tmp_path / "bad_out"
    argv = ["eval", *map(str, args), "--output", str(out), *SMALL, "--no_cache"]
    if capsys is not None:
        capsys.readouterr()
        status = main(argv)
        stderr = capsys.readouterr().err
    else:
        env = {**os.environ, "JAXMERGE_COMPILATION_CACHE": "off"}
        run = subprocess.run(
            [sys.executable, "-m", "jaxmerge", *argv],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
        )  # fmt: skip
        status, stderr = run.returncode, run.stderr
    assert status == 2, stderr
    assert not out.exists()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr  # one line, and none of the libraries' start-up noise
    return lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path, models, capsys):
    line = _error(tmp_path, "--checkpoint", models["m1"], "--tasks", "jaxmerge_sentimen_review")
    assert "no seqio Task or Mixture named 'jaxmerge_sentimen_review'" in line
    assert "did you mean jaxmerge_sentiment_review" in line
    line = _error(
        tmp_path, "--checkpoint", models["m1"], "--tasks", TASKS[0], "--module", "no_such_mod",
        capsys=capsys,
    )  # fmt: skip
    assert "--module no_such_mod: import failed: ModuleNotFoundError" in line
    # t5_tiny.gin's sizes but emb_dim 32: every parameter is there, with other shapes
    narrow = dataclasses.replace(TINY_GIN, emb_dim=32)
    path = _checkpoint(tmp_path / "narrow", 0, narrow)
    gin_model = ["--gin_file=gin_configs/models/t5_tiny.gin", "--gin.DROPOUT_RATE=0.0"]
    line = _error(tmp_path, "--checkpoint", path, "--tasks", TASKS[0], *gin_model, capsys=capsys)
    assert f"{path}: parameter " in line
    assert "has shape" in line and "the model config expects" in line, line
    line = _error(
        tmp_path, "--checkpoint", str(tmp_path / "nothing"), "--tasks", TASKS[0], capsys=capsys
    )
    assert "checkpoint not found" in line
    line = _error(
        tmp_path, "--checkpoint", models["m1"], "--tasks", TASKS[0], "--expert", "oops",
        capsys=capsys,
    )  # fmt: skip
    assert "expected CATEGORY=PATH" in line
