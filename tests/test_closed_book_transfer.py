"""benchmarks/closed_book_transfer.py: who each question asks about, the seen / unseen
split of the held-out questions, the ceiling and the accuracy arithmetic."""

import numpy as np
import pytest

from benchmarks import closed_book_transfer as cbt
from jaxmerge.tasks import registry, world

FACT_OF = {"closed_book_city": "city", "closed_book_job": "job"}


@pytest.mark.parametrize("dataset", sorted(cbt.DATASETS))
def test_subject_is_the_person_whose_fact_is_the_answer(dataset):
    people = {p.name: p for p in world.world().people}
    groups = cbt.question_groups(dataset)
    for e in groups["train"] + groups["seen"] + groups["unseen"]:
        assert getattr(people[cbt.subject(e["inputs"])], FACT_OF[dataset]) == e["targets"]


def test_subject_refuses_a_question_without_exactly_one_person():
    with pytest.raises(ValueError, match="names 0 people"):
        cbt.subject("question: where does nobody live?")


@pytest.mark.parametrize("dataset", sorted(cbt.DATASETS))
def test_seen_questions_ask_a_training_fact_in_the_other_phrasing(dataset):
    groups = cbt.question_groups(dataset)
    train_by_subject = {}
    for e in groups["train"]:
        train_by_subject.setdefault(cbt.subject(e["inputs"]), []).append(e)
    generator = cbt.DATASETS[dataset]
    held = registry.examples(dataset, generator, "validation") + registry.examples(
        dataset, generator, "test"
    )
    assert sorted(map(str, groups["seen"] + groups["unseen"])) == sorted(map(str, held))
    assert groups["seen"] and groups["unseen"]
    for e in groups["seen"]:
        asked = train_by_subject[cbt.subject(e["inputs"])]
        assert all(t["inputs"] != e["inputs"] and t["targets"] == e["targets"] for t in asked)
    assert not any(cbt.subject(e["inputs"]) in train_by_subject for e in groups["unseen"])


@pytest.mark.parametrize("dataset", sorted(cbt.DATASETS))
def test_ceiling_is_the_seen_share_plus_chance_on_the_rest(dataset):
    groups = cbt.question_groups(dataset)
    asked = {cbt.subject(e["inputs"]) for e in groups["train"]}
    val = groups["validation"]
    seen = sum(cbt.subject(e["inputs"]) in asked for e in val)
    chance = 1 / len({e["targets"] for e in groups["train"]})
    assert cbt.ceiling(dataset) == pytest.approx(
        100 * (seen + (len(val) - seen) * chance) / len(val)
    )
    assert 50 < cbt.ceiling(dataset) < 100  # most, not all, validation facts are trained on


def test_accuracy_is_exact_match_of_the_greedy_answers(monkeypatch):
    vocab = registry.vocabulary()
    examples = cbt.question_groups("closed_book_city")["seen"][:10]

    def answers_the_first_four(config, params, tokens, max_decode_length):
        out = np.zeros((len(tokens), max_decode_length), np.int32)
        for i, e in enumerate(examples):
            answer = e["targets"] if i < 4 else e["targets"] + "x"
            ids = vocab.encode(answer) + [vocab.eos_id]
            out[i, : len(ids)] = ids
        return out

    monkeypatch.setattr(cbt.decoding, "greedy_decode", answers_the_first_four)
    assert cbt.accuracy(examples, cbt.answers(None, None, examples)) == pytest.approx(40.0)
