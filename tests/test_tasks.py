"""Built-in tasks: registered names, determinism, disjoint splits, span corruption."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmerge import tasks
from jaxmerge.tasks import held_in, held_out, instructions, metrics, registry, world

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
        tilted = seqio.get_mixture_or_task(f"jaxmerge_held_in_tilted_{category}")
        assert len(tilted.tasks) == 16
        mine = {t.name for t in mixture.tasks}
        for t in tilted.tasks:  # the category's datasets TILT_RATE times as often
            assert tilted.get_rate(t) == (registry.TILT_RATE if t.name in mine else 1.0)
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


@pytest.mark.parametrize("name", ["extractive_kv", "extractive_story"])
def test_extractive_answer_is_read_from_the_passage(name):
    """The answer is a word of the passage, and the question's kind alone does not give it.

    Facts are drawn at random, not from the world: for each question wording, no one
    answer covers more than a third of the examples (an earlier extractive_story always
    had three cities, and only which person was asked told them apart).
    """
    exs = registry.examples(name, ALL[name], "train")
    answers = collections.defaultdict(collections.Counter)
    for e in exs:
        passage, question = e["inputs"].rsplit(". ", 1)
        assert e["targets"] in passage.replace(".", " ").replace(",", " ").split(), e
        answers[" ".join(w for w in question.split() if not w[0].isupper())][e["targets"]] += 1
    assert len(answers) >= 4
    for question, counts in answers.items():
        assert counts.most_common(1)[0][1] <= sum(counts.values()) / 3, (question, counts)


@pytest.mark.parametrize("name", ["paraphrase_synonym", "paraphrase_order"])
def test_paraphrase_answer_is_not_given_by_one_word(name):
    """Same meaning or not depends on both sentences: no word of s2, alone, tells the answer.

    For every word in s2 of 50+ train examples, the share of "yes" among them stays within
    0.25 of the overall share (an earlier paraphrase_synonym drew the synonym from the
    pairs' second words and the other word from their first: "yes" for every "large").
    """
    exs = registry.examples(name, ALL[name], "train")
    overall = sum(e["targets"] == "yes" for e in exs) / len(exs)
    yes, seen = collections.Counter(), collections.Counter()
    for e in exs:
        for word in set(e["inputs"].split(" s2: ")[1].split()):
            seen[word] += 1
            yes[word] += e["targets"] == "yes"
    for word in (w for w, n in seen.items() if n >= 50):
        assert abs(yes[word] / seen[word] - overall) <= 0.25, (word, yes[word], seen[word])


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


def test_held_out_is_never_trained_on():
    """No held-out input is a held-in input, and every held-out task's correct choice
    varies (the answer is not one string): held-out asks in held-in words, not held-in's
    examples."""
    held_in_inputs = {
        e["inputs"]
        for ds in held_in.CATEGORIES.values()
        for d, g in ds.items()
        for split in registry.SPLIT_SIZES
        for e in registry.examples(d, g, split)
    }
    for ds in held_out.CATEGORIES.values():
        for d, g in ds.items():
            exs = registry.examples(d, g, "train")
            assert not {e["inputs"] for e in exs} & held_in_inputs, d
            assert len({e["choices"][e["label"]] for e in exs}) >= 2, d


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


def _word_runs(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().replace("?", " ").replace(".", " ").replace(",", " ").split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_instruction_mixture_is_disjoint_from_held_in_and_held_out_by_content():
    """No instruction example shares an input, a target, or a run of 5 words with any
    held-in or held-out example (every split), and none names a person or a city."""
    evaluated = {
        **{d: g for ds in held_in.CATEGORIES.values() for d, g in ds.items()},
        **{d: g for ds in held_out.CATEGORIES.values() for d, g in ds.items()},
    }
    eval_inputs, eval_runs = set(), set()
    for name, gen in evaluated.items():
        for split in registry.SPLIT_SIZES:
            for e in registry.examples(name, gen, split):
                eval_inputs.add(e["inputs"])
                eval_runs |= _word_runs(e["inputs"])
    w = world.world()
    named = {p.name.lower() for p in w.people} | {c.lower() for c in w.cities}
    for name, gen in instructions.INSTRUCTIONS.items():
        for split in registry.SPLIT_SIZES:
            for e in registry.examples(f"instr_{name}", gen, split):
                assert e["inputs"] not in eval_inputs, (name, e)
                shared = _word_runs(e["inputs"]) & eval_runs
                assert not shared, (name, sorted(shared)[:3])
                assert not named & set(e["inputs"].lower().split()), (name, e)


def test_instruction_mixture_has_its_families_and_answer_formats():
    assert len(instructions.FAMILIES) >= 6
    assert len(instructions.INSTRUCTIONS) == sum(map(len, instructions.FAMILIES.values()))
    answers = collections.Counter(
        e["targets"]
        for name, g in instructions.INSTRUCTIONS.items()
        for e in registry.examples(f"instr_{name}", g, "test")
    )
    assert answers["yes"] and answers["no"]  # the yes/no format the held-out tasks use
    assert answers["first"] and answers["second"]  # one of two words named in the question
    for name, g in instructions.INSTRUCTIONS.items():  # no task's answer is a constant
        assert len({e["targets"] for e in registry.examples(f"instr_{name}", g, "test")}) > 1


def test_fitted_feature_lengths_hold_every_example_and_trim_the_rest():
    from jaxmerge.tasks import lengths

    assert lengths.fitted_feature_lengths("jaxmerge_held_in") == {"inputs": 256, "targets": 64}
    assert lengths.fitted_feature_lengths("jaxmerge_held_in_topic") == {
        "inputs": 96,
        "targets": 32,
    }
    for category in held_in.CATEGORIES:
        name = f"jaxmerge_held_in_{category}"
        fitted = lengths.fitted_feature_lengths(name)
        assert fitted["inputs"] % lengths.INPUT_QUANTUM == 0
        for task in lengths.task_names(name):
            dataset, gen = registry.generated_datasets()[task]
            for e in registry.examples(dataset, gen, "train"):
                assert len(e["inputs"].encode()) < fitted["inputs"]
                assert len(e["targets"].encode()) < fitted["targets"]
        assert fitted["inputs"] - lengths.INPUT_QUANTUM < max(  # not longer than needed
            len(e["inputs"].encode()) + 1
            for t in lengths.task_names(name)
            for e in registry.examples(*registry.generated_datasets()[t], "train")
        )


def test_fitted_feature_lengths_refuse_a_task_that_is_not_built_in():
    import seqio

    from jaxmerge.tasks import lengths

    tasks.register()
    feature = seqio.Feature(registry.vocabulary())
    no_rows = lambda split, shuffle_files=False, seed=None: None
    seqio.TaskRegistry.add(
        "test_not_built_in",
        source=seqio.FunctionDataSource(no_rows, ["train"]),
        output_features={"inputs": feature, "targets": feature},
    )
    try:
        with pytest.raises(ValueError, match="'test_not_built_in'.*TASK_FEATURE_LENGTHS"):
            lengths.fitted_feature_lengths("test_not_built_in")
    finally:
        seqio.TaskRegistry.remove("test_not_built_in")


def test_pretraining_replay_fits_the_instruction_rows():
    """jaxmerge_instructions_with_replay: REPLAY_FRACTION of its examples are span
    corruption of the pre-training documents, split into pieces that fit the instruction
    mixture's rows untruncated, and the pieces hold every token of the documents."""
    import seqio

    from jaxmerge.tasks import lengths

    tasks.register()
    mixture = seqio.get_mixture_or_task("jaxmerge_instructions_with_replay")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    replay_rate = rates.pop(f"jaxmerge_pretrain_corpus_{registry.REPLAY_MAX_TOKENS}")
    assert set(rates) == {f"jaxmerge_instr_{d}" for d in instructions.INSTRUCTIONS}
    assert replay_rate / (replay_rate + sum(rates.values())) == pytest.approx(
        registry.REPLAY_FRACTION
    )

    fitted = lengths.fitted_feature_lengths("jaxmerge_instructions_with_replay")
    assert fitted == lengths.fitted_feature_lengths("jaxmerge_instructions")
    whole, pieces = (
        registry.pretraining_examples("validation", n) for n in (None, registry.REPLAY_MAX_TOKENS)
    )
    assert max(len(x) for x in pieces[0]) < fitted["inputs"] < max(len(x) for x in whole[0])
    assert max(len(y) for y in pieces[1]) < fitted["targets"]
    plain = lambda rows: sum(int((r < 259).sum()) for r in rows)  # bytes, not sentinels
    assert plain(pieces[0]) + plain(pieces[1]) == plain(whole[0]) + plain(whole[1])
    assert len(pieces[0]) > len(whole[0])


def test_instruction_families_are_mixtures():
    import seqio

    tasks.register()
    for family, generators in instructions.FAMILIES.items():
        mixture = seqio.get_mixture_or_task(f"jaxmerge_instructions_{family}")
        assert sorted(t.name for t in mixture.tasks) == sorted(
            f"jaxmerge_instr_{g.__name__}" for g in generators
        )
