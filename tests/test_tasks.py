"""Built-in tasks: registered names, determinism, disjoint splits, span corruption."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmerge import tasks
from jaxmerge.tasks import held_in, held_out, instructions, metrics, registry

ALL = {
    **{d: g for ds in held_in.CATEGORIES.values() for d, g in ds.items()},
    **{d: g for ds in held_out.CATEGORIES.values() for d, g in ds.items()},
    **{f"instr_{d}": g for d, g in instructions.INSTRUCTIONS.items()},
}


def test_categories_mirror_t0():
    assert len(held_in.CATEGORIES) == 8
    assert all(len(ds) == 2 for ds in held_in.CATEGORIES.values())
    assert set(held_out.CATEGORIES) == {"sentence_completion", "nli", "coreference", "word_sense"}


def test_mixtures_registered():
    import seqio

    tasks.register()
    for name in [
        "jaxmerge_pretrain",
        "jaxmerge_instructions",
        "jaxmerge_held_in",
        "jaxmerge_held_out",
    ]:
        assert name in seqio.MixtureRegistry.names()
    for category in held_in.CATEGORIES:
        mixture = seqio.get_mixture_or_task(f"jaxmerge_held_in_{category}")
        assert len(mixture.tasks) == 2
    for d in ALL:
        assert f"jaxmerge_{d}" in seqio.TaskRegistry.names()


@pytest.mark.parametrize("name", sorted(ALL))
def test_deterministic_and_splits_disjoint(name):
    gen = ALL[name]
    splits = {s: registry.examples(name, gen, s) for s in registry.SPLIT_SIZES}
    registry.examples.cache_clear()
    again = {s: registry.examples(name, gen, s) for s in registry.SPLIT_SIZES}
    assert splits == again
    inputs = {s: {e["inputs"] for e in exs} for s, exs in splits.items()}
    assert all(len(inputs[s]) == len(splits[s]) for s in splits)  # no duplicates
    assert not inputs["train"] & inputs["validation"]
    assert not inputs["train"] & inputs["test"]
    assert not inputs["validation"] & inputs["test"]
    assert len(splits["test"]) >= 10 and len(splits["train"]) >= 80


@pytest.mark.parametrize("name", sorted(ALL))
def test_examples_fit_the_recipes_lengths_untruncated(name):
    """Inputs < 256 and targets (or every choice) < 64 bytes, leaving room for EOS."""
    for split in registry.SPLIT_SIZES:
        for e in registry.examples(name, ALL[name], split):
            assert len(e["inputs"].encode()) < 256
            assert all(len(t.encode()) < 64 for t in e.get("choices", [e.get("targets")]))


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_trivial_majority_answer(name):
    """The most common answer covers at most 60% of the test split (room above chance)."""
    exs = registry.examples(name, ALL[name], "test")
    answers = [e.get("targets", e.get("label")) for e in exs]
    assert collections.Counter(answers).most_common(1)[0][1] <= 0.6 * len(answers)


def test_held_out_rows_have_one_correct_choice():
    tasks.register()
    import seqio

    ds = seqio.get_mixture_or_task("jaxmerge_nli_facts").get_dataset(
        {"inputs": 256, "targets": 16}, split="test", shuffle=False, use_cached=False
    )
    correct = collections.Counter()
    for ex in ds.as_numpy_iterator():
        correct[int(ex["idx"])] += int(ex["is_correct"])
    assert len(correct) == len(registry.examples("nli_facts", held_out.nli_facts, "test"))
    assert set(correct.values()) == {1}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(3, 258), min_size=4, max_size=300))
def test_span_corruption_reconstructs_the_text(tokens):
    tokens = np.asarray(tokens, np.int32)
    inputs, targets = registry.span_corrupt(tokens, vocab_size=359)
    spans, current = {}, None
    for t in targets:
        if t >= 259:
            current = int(t)
            spans[current] = []
        else:
            spans[current].append(int(t))
    rebuilt = [x for t in inputs for x in (spans[int(t)] if t >= 259 else [int(t)])]
    assert rebuilt == tokens.tolist()
    assert 0 < len(targets) - len(spans) < len(tokens)


def test_rank_classification_metric():
    targets = [(0, False), (0, True), (1, True), (1, False)]
    assert metrics.rank_classification(targets, [-3.0, -1.0, -5.0, -2.0]) == {"accuracy": 50.0}
    assert metrics.exact_match(["a", "b"], ["a ", "c"]) == {"accuracy": 50.0}


def test_pretraining_corpus_is_deterministic():
    first = registry.pretraining_examples("validation")
    registry.pretraining_examples.cache_clear()
    again = registry.pretraining_examples("validation")
    assert len(first[0]) == registry.SPLIT_SIZES["validation"]
    for a, b in zip(first[0] + first[1], again[0] + again[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(t[0] == 358 for t in first[1])  # targets start with the first sentinel
