"""Normalized scores on a hand-made table, and the score cache's keys."""

import math

import numpy as np
import pytest

from jaxmerge.evaluation import normalize
from jaxmerge.evaluation.normalize import HELD_IN, HELD_OUT, TaskRole
from jaxmerge.evaluation.references import ScoreCache, fingerprint, tree_fingerprint

ROLES = {
    "sent_a": TaskRole(HELD_IN, "sentiment", "expert_sentiment"),
    "sent_b": TaskRole(HELD_IN, "sentiment", "expert_sentiment"),
    "topic_a": TaskRole(HELD_IN, "topic", "expert_topic"),
    "nli": TaskRole(HELD_OUT, "nli", "base"),
    "coref": TaskRole(HELD_OUT, "coreference", "base"),
}
REFERENCES = {
    "expert_sentiment": {"sent_a": 80.0, "sent_b": 50.0},
    "expert_topic": {"topic_a": 40.0},
    "base": {"nli": 50.0, "coref": 25.0},
}


def test_normalized_scores_by_hand():
    merged = {"sent_a": 40.0, "sent_b": 50.0, "topic_a": 30.0, "nli": 60.0, "coref": 25.0}
    got = normalize.normalized_scores(merged, ROLES, REFERENCES)
    # sentiment: (40/80 + 50/50) / 2 = 0.75; topic: 30/40 = 0.75; held-in (0.75 + 0.75) / 2
    assert got["categories"][HELD_IN] == {"sentiment": 0.75, "topic": 0.75}
    assert got[HELD_IN] == pytest.approx(0.75)
    # nli 60/50 = 1.2, coreference 25/25 = 1; held-out 1.1
    assert got["categories"][HELD_OUT] == {"nli": 1.2, "coreference": 1.0}
    assert got[HELD_OUT] == pytest.approx(1.1)
    assert got["tasks"]["sent_a"] == 0.5


def test_categories_weigh_equally_whatever_their_task_count():
    merged = {"sent_a": 80.0, "sent_b": 50.0, "topic_a": 0.0}
    got = normalize.normalized_scores(merged, ROLES, REFERENCES)
    assert got[HELD_IN] == pytest.approx(0.5)  # (1 + 1) / 2 and 0: mean of 1 and 0
    assert math.isnan(got[HELD_OUT])  # no held-out task scored


def test_an_expert_is_one_on_its_own_category():
    got = normalize.normalized_scores(REFERENCES["expert_sentiment"], ROLES, REFERENCES)
    assert got["categories"][HELD_IN] == {"sentiment": 1.0}


def test_zero_reference_is_undefined_and_skipped():
    references = {**REFERENCES, "base": {"nli": 0.0, "coref": 25.0}}
    got = normalize.normalized_scores({"nli": 10.0, "coref": 50.0}, ROLES, references)
    assert math.isnan(got["tasks"]["nli"])
    assert got[HELD_OUT] == 2.0


def test_mean_over_seeds():
    seeds = [{HELD_IN: 0.8, HELD_OUT: 1.0}, {HELD_IN: 0.6, HELD_OUT: math.nan}]
    assert normalize.mean_over_seeds(seeds) == {HELD_IN: pytest.approx(0.7), HELD_OUT: 1.0}


def test_primary_metric():
    assert normalize.primary_metric("t", {"accuracy": 3.0, "f1": 1.0}) == 3.0
    assert normalize.primary_metric("t", {"bleu": 2.0}) == 2.0
    assert normalize.primary_metric("t", {"bleu": 2.0, "f1": 1.0}, "f1") == 1.0
    with pytest.raises(ValueError, match="task t: metrics \\['bleu', 'f1'\\] have no"):
        normalize.primary_metric("t", {"bleu": 2.0, "f1": 1.0})


def test_fingerprint_follows_content_not_path(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w.bin").write_bytes(b"weights")
    cache = tmp_path / "cache"
    assert fingerprint(tmp_path / "a", cache) == fingerprint(tmp_path / "b", cache)
    before = fingerprint(tmp_path / "a", cache)
    (tmp_path / "a" / "w.bin").write_bytes(b"other weights")
    assert fingerprint(tmp_path / "a", cache) != before  # size and mtime changed: re-hashed


def test_tree_fingerprint():
    a = {"x/kernel": np.ones((2, 3), np.float32)}
    assert tree_fingerprint(a) == tree_fingerprint({"x/kernel": np.ones((2, 3), np.float32)})
    assert tree_fingerprint(a) != tree_fingerprint({"x/kernel": np.ones((3, 2), np.float32)})
    assert tree_fingerprint(a) != tree_fingerprint({"x/kernel": np.ones((2, 3), np.float16)})


def test_score_cache_keys_on_settings(tmp_path):
    cache = ScoreCache(tmp_path, {"split": "test", "tasks": ["a"]})
    cache.put("abc", {"a": {"accuracy": 50.0}})
    assert cache.get("abc") == {"a": {"accuracy": 50.0}}
    assert cache.get("abd") is None
    assert ScoreCache(tmp_path, {"split": "validation", "tasks": ["a"]}).get("abc") is None
    assert ScoreCache(None, {}).get("abc") is None
