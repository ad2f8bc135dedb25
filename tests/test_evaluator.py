"""Evaluator: metrics by hand, rank-classification ties, user tasks, reuse, sharding, bad input.

The hand-built "constant" model ignores its input: every embedding row is 1, the decoder
layers' output projections are 0, so the decoder's final norm gives ones and the logits
are c at one token and 0 elsewhere, at every position. Greedy decoding then emits that
token at every step, and log p(target) = k·(−log Z) + (c − log Z) for k non-EOS tokens
followed by EOS, with log Z = log(e^c + vocab − 1): shorter targets score higher.
"""

import dataclasses
import importlib.util
import math

import jax
import numpy as np
import pytest
import seqio
from jax.sharding import Mesh

from jaxmerge import tasks
from jaxmerge.errors import InputError
from jaxmerge.evaluation import Evaluator
from jaxmerge.models import decoding, params, t5
from jaxmerge.tasks import metrics
from tests.tiny_t5 import TINY_RELU

CFG = TINY_RELU
LENGTHS = {"inputs": 64, "targets": 8}
EOS, A = 1, ord("a") + 3  # byte vocabulary ids

GEN_TARGETS = ["", "aaaaaaaa", "yes", "", "no", "aaaaaaaa", "", "topic", "x", "", "aaaa", "b"]
GEN = [(f"question {i}: what?", t) for i, t in enumerate(GEN_TARGETS)]  # (inputs, targets)
# (choices, label): the constant model picks the shortest choice, the first of equal ones.
CHOICE = [
    (["aa", "a", "aaa"], 1),  # shortest is correct: hit
    (["bb", "cc"], 1),  # tie -> first -> miss (the old tie-break in favour of correct: hit)
    (["dd", "ee"], 0),  # tie -> first -> hit
    (["long choice", "x"], 0),  # shortest is wrong: miss
    (["xy", "x", "z"], 2),  # tie of "x" and "z" -> "x" -> miss (old: hit)
]


def prediction_stats(targets, predictions):
    return {"mean_prediction_bytes": float(np.mean([len(p) for p in predictions]))}


def score_stats(targets, scores):
    return {"mean_score": float(np.mean(scores))}


def _register(name, rows: dict, **kw):
    import tensorflow as tf

    def dataset_fn(split, shuffle_files=False, seed=None):
        if split == "train":  # an empty split
            return tf.data.Dataset.from_tensor_slices(
                {k: tf.constant([], tf.constant(v).dtype) for k, v in rows.items()}
            )
        return tf.data.Dataset.from_tensor_slices({k: np.asarray(v) for k, v in rows.items()})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    feature = seqio.Feature(tasks.vocabulary(), add_eos=True)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, ["validation", "train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={"inputs": feature, "targets": feature},
        **kw,
    )


@pytest.fixture(scope="module", autouse=True)
def test_tasks():
    _register(
        "evaltest_gen",
        {"inputs": [i for i, _ in GEN], "targets": [t for _, t in GEN]},
        metric_fns=[metrics.exact_match, prediction_stats, score_stats],
    )
    rows = [
        (f"pick {q}", c, q, j == lab)
        for q, (cs, lab) in enumerate(CHOICE)
        for j, c in enumerate(cs)
    ]
    _register(
        "evaltest_choice",
        {k: [r[i] for r in rows] for i, k in enumerate(("inputs", "targets", "idx", "is_correct"))},
        postprocess_fn=metrics.rank_classification_target,
        metric_fns=[metrics.rank_classification],
    )


_init = jax.jit(lambda config, key: params.unbox(t5.init_params(config, key)), static_argnums=0)


def random_params(seed: int) -> dict:
    """Random-init parameters as numpy arrays."""
    return jax.tree.map(np.asarray, _init(CFG, jax.random.key(seed)))


def constant_params(token: int, logit: float = 2.0) -> dict:
    """The constant model of the module docstring, emitting `token` with logit `logit`."""
    flat = params.flatten(random_params(0))
    for name in flat:
        if name.endswith(("attention/out/kernel", "mlp/wo/kernel")) and name.startswith("dec"):
            flat[name] = np.zeros_like(flat[name])
    flat["token_embedder/embedding"] = np.ones_like(flat["token_embedder/embedding"])
    flat["decoder/decoder_norm/scale"] = np.ones_like(flat["decoder/decoder_norm/scale"])
    kernel = np.zeros_like(flat["decoder/logits_dense/kernel"])
    kernel[:, token] = logit / CFG.emb_dim  # ones @ kernel = logit at `token`
    flat["decoder/logits_dense/kernel"] = kernel
    return params.unflatten(flat)


def constant_log_likelihood(target: str, logit: float = 2.0) -> float:
    """log p(target) under constant_params(EOS, logit), truncated as seqio does."""
    k = min(len(target.encode()), LENGTHS["targets"] - 1)
    log_z = math.log(math.exp(logit) + CFG.vocab_size - 1)
    return k * -log_z + (logit - log_z)


def encode(texts: list[str], length: int) -> np.ndarray:
    """As seqio's tokenize + append_eos_after_trim + EncDecFeatureConverter(pack=False)."""
    vocab = tasks.vocabulary()
    out = np.zeros((len(texts), length), np.int32)
    for i, t in enumerate(texts):
        ids = list(vocab.encode(t))[: length - 1] + [EOS]
        out[i, : len(ids)] = ids
    return out


def assert_metrics_close(a: dict, b: dict) -> None:
    """{task: {metric: value}} equal up to float32 rounding of summed log-likelihoods."""
    assert a.keys() == b.keys()
    for task in a:
        assert a[task] == pytest.approx(b[task], rel=1e-5), task


def evaluator(names, **kw) -> Evaluator:
    kw = {"task_feature_lengths": LENGTHS, "batch_size": 8, **kw}
    return Evaluator(CFG, names, **kw)


@pytest.fixture(scope="module")
def shared():
    """One evaluator of both test tasks, reused by several tests (as a merge would)."""
    return evaluator(["evaltest_gen", "evaltest_choice"])


# --- 1. known answers --------------------------------------------------------------
@pytest.mark.parametrize("token,answer", [(EOS, ""), (A, "a" * LENGTHS["targets"])])
def test_constant_model_exact_match_by_hand(shared, token, answer):
    got = shared.evaluate(constant_params(token))["evaltest_gen"]
    hits = [t == answer for t in GEN_TARGETS]
    assert got["accuracy"] == pytest.approx(100 * np.mean(hits))
    assert got["mean_prediction_bytes"] == len(answer)


def test_constant_model_scores_by_hand(shared):
    got = shared.evaluate(constant_params(EOS))["evaltest_gen"]["mean_score"]
    expected = np.mean([constant_log_likelihood(t) for t in GEN_TARGETS])
    assert got == pytest.approx(expected, rel=1e-4)


def test_random_model_scores_equal_score_batch(shared):
    p = random_params(3)
    got = shared.evaluate(p)
    batch = {
        "encoder_input_tokens": encode([i for i, _ in GEN], LENGTHS["inputs"]),
        "decoder_target_tokens": encode(GEN_TARGETS, LENGTHS["targets"]),
    }
    scores = np.asarray(decoding.score_batch(CFG, p, batch))
    assert got["evaltest_gen"]["mean_score"] == pytest.approx(scores.mean(), rel=1e-5)
    tokens = np.asarray(decoding.greedy_decode(CFG, p, batch["encoder_input_tokens"], 8))
    preds = [tasks.vocabulary().decode(row.tolist()) for row in tokens]
    assert got["evaltest_gen"]["mean_prediction_bytes"] == np.mean([len(x) for x in preds])


# --- 2. rank classification ---------------------------------------------------------
def test_rank_classification_picks_highest_and_breaks_ties_first():
    targets = [(0, False), (0, True), (1, False), (1, True), (2, True), (2, False)]
    scores = [-2.0, -1.0, -3.0, -3.0, -3.0, -3.0]  # q0: highest is correct; q1, q2: ties
    assert metrics.rank_classification(targets, scores) == {"accuracy": pytest.approx(200 / 3)}
    equal = [0.0] * len(targets)  # every choice scored the same: the first choice wins
    assert metrics.rank_classification(targets, equal) == {"accuracy": pytest.approx(100 / 3)}


def test_rank_classification_through_the_evaluator(shared):
    got = shared.evaluate(constant_params(EOS))["evaltest_choice"]
    hits = []  # the first of the shortest choices, computed from the raw questions
    for choices, label in CHOICE:
        lengths = [len(c) for c in choices]
        hits.append(lengths.index(min(lengths)) == label)
    assert np.mean(hits) == 0.4
    assert got == {"accuracy": pytest.approx(40.0)}


def test_rank_classification_of_a_random_model_equals_score_batch(shared):
    p = random_params(4)
    rows = [(f"pick {q}", c, q, j) for q, (cs, _) in enumerate(CHOICE) for j, c in enumerate(cs)]
    batch = {
        "encoder_input_tokens": encode([r[0] for r in rows], LENGTHS["inputs"]),
        "decoder_target_tokens": encode([r[1] for r in rows], LENGTHS["targets"]),
    }
    scores = np.asarray(decoding.score_batch(CFG, p, batch))
    best: dict[int, tuple[float, int]] = {}
    for (_, _, q, j), s in zip(rows, scores, strict=True):
        if q not in best or s > best[q][0]:
            best[q] = (s, j)
    expected = 100 * np.mean([best[q][1] == label for q, (_, label) in enumerate(CHOICE)])
    assert shared.evaluate(p)["evaltest_choice"]["accuracy"] == pytest.approx(expected)


# --- 3. a user module's task ----------------------------------------------------------
USER_MODULE = """
import numpy as np
import seqio
import tensorflow as tf

from jaxmerge import tasks


def mean_length(targets, predictions):
    return {"mean_length": float(np.mean([len(p) for p in predictions]))}


def total_score(targets, scores):
    return {"total_score": float(np.sum(scores))}


def dataset_fn(split, shuffle_files=False, seed=None):
    inputs = [f"say something about {w}" for w in ("cats", "rain", "tea", "maps", "oak")]
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": ["ok"] * 5})


feature = seqio.Feature(tasks.vocabulary(), add_eos=True)
if "user_echo" in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove("user_echo")
seqio.TaskRegistry.add(
    "user_echo",
    source=seqio.FunctionDataSource(dataset_fn, ["validation"]),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={"inputs": feature, "targets": feature},
    metric_fns=[mean_length, total_score],
)
"""


def test_user_module_task(tmp_path):
    path = tmp_path / "user_tasks.py"
    path.write_text(USER_MODULE)
    spec = importlib.util.spec_from_file_location("user_tasks", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    p = random_params(5)
    got = evaluator("user_echo").evaluate(p)["user_echo"]
    words = ("cats", "rain", "tea", "maps", "oak")
    x = encode([f"say something about {w}" for w in words], LENGTHS["inputs"])
    tokens = np.asarray(decoding.greedy_decode(CFG, p, x, LENGTHS["targets"]))
    preds = [tasks.vocabulary().decode(row.tolist()) for row in tokens]
    batch = {"encoder_input_tokens": x, "decoder_target_tokens": encode(["ok"] * 5, 8)}
    scores = np.asarray(decoding.score_batch(CFG, p, batch))
    assert got["mean_length"] == pytest.approx(np.mean([len(s) for s in preds]))
    assert got["total_score"] == pytest.approx(scores.sum(), rel=1e-5)


# --- 4. reuse -------------------------------------------------------------------------
def test_reused_evaluator_equals_fresh_ones_without_recompiling():
    names = ["evaltest_gen", "jaxmerge_topic_news", "jaxmerge_nli_facts"]
    as_jax = _init(CFG, jax.random.key(1))  # jax arrays on one device
    trees = [random_params(0), as_jax, random_params(2)]
    ev = evaluator(names, max_examples=12)
    first = ev.evaluate(trees[0])
    compiled = ev.num_compilations
    # predict and score, once per batch shape: each task's batches fit its longest example
    assert 2 <= compiled <= 2 * len(names)
    reused = [first] + [ev.evaluate(t) for t in trees[1:]]
    assert ev.num_compilations == compiled
    assert ev.num_data_builds == 1
    assert ev.last_timing.total_s >= ev.last_timing.model_s > 0
    for tree, got in zip(trees, reused, strict=True):
        assert got == evaluator(names, max_examples=12).evaluate(tree)
    assert len({r["evaltest_gen"]["mean_score"] for r in reused}) == 3  # the trees differ


# --- 5. sharding ------------------------------------------------------------------------
def test_one_device_and_eight_devices_agree():
    p = random_params(6)
    one = Mesh(np.array(jax.devices()[:1]), ("data",))
    names = ["evaltest_gen", "evaltest_choice", "jaxmerge_sentiment_review"]
    on_one = evaluator(names, mesh=one, max_examples=16).evaluate(p)
    on_eight = evaluator(names, max_examples=16).evaluate(p)
    assert_metrics_close(on_one, on_eight)


# --- 6. ragged final batch ----------------------------------------------------------------
def test_ragged_final_batch_equals_exact_batches():
    p = random_params(7)
    one = Mesh(np.array(jax.devices()[:1]), ("data",))
    ragged = evaluator("evaltest_gen", max_examples=10).evaluate(p)  # 10 rows, batches of 8
    exact = evaluator("evaltest_gen", mesh=one, batch_size=5, max_examples=10).evaluate(p)
    single = evaluator("evaltest_gen", mesh=one, batch_size=1, max_examples=10).evaluate(p)
    assert_metrics_close(ragged, exact)
    assert_metrics_close(ragged, single)


# --- 7. bad input -----------------------------------------------------------------------
def _one_line_error(fn, *match):
    with pytest.raises(InputError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    for m in match:
        assert m in message, message


def test_unknown_name_suggests_close_ones():
    _one_line_error(lambda: evaluator("jaxmerge_held_inn"), "jaxmerge_held_inn", "jaxmerge_held_in")
    _one_line_error(lambda: evaluator(["evaltest_gen", "evaltest_gne"]), "'evaltest_gen'")


def test_missing_and_empty_splits():
    _one_line_error(lambda: evaluator("evaltest_gen", split="test"), "evaltest_gen", "'test'")
    _one_line_error(
        lambda: evaluator("evaltest_gen", split="train"), "evaltest_gen", "no examples", "'train'"
    )


def test_bad_sizes():
    _one_line_error(lambda: evaluator("evaltest_gen", batch_size=6), "batch_size 6", "8")
    _one_line_error(lambda: evaluator("evaltest_gen", max_examples=0), "max_examples 0")
    bad = {"inputs": 8}
    _one_line_error(lambda: evaluator("evaltest_gen", task_feature_lengths=bad), "'targets'")


def test_parameter_tree_that_does_not_fit(shared):
    p = params.flatten(random_params(0))
    name = "encoder/layers_0/mlp/wo/kernel"
    wrong = dict(p, **{name: np.zeros((64, 31), np.float32)})
    _one_line_error(lambda: shared.evaluate(params.unflatten(wrong)), name, "(64, 31)", "(64, 32)")
    missing = {k: v for k, v in p.items() if k != name}
    _one_line_error(lambda: shared.evaluate(params.unflatten(missing)), name, "(64, 32)")
    extra = dict(p, **{"encoder/extra/kernel": np.zeros(3)})
    _one_line_error(lambda: shared.evaluate(params.unflatten(extra)), "encoder/extra/kernel")
    other = dataclasses.replace(CFG, emb_dim=16)
    smaller = _init(other, jax.random.key(0))
    _one_line_error(lambda: shared.evaluate(smaller), "has shape", "16", "32")
