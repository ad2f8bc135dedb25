"""benchmarks/fact_recall.py: the cloze probe's rows and its recall arithmetic."""

import numpy as np
import pytest

from benchmarks import fact_recall
from jaxmerge.tasks import registry, world


@pytest.mark.parametrize("fact", sorted(fact_recall.CLOZES))
def test_cloze_rows_mask_the_fact_as_pretraining_does(fact):
    batch, k = fact_recall.cloze_batch(fact)
    vocab, people = registry.vocabulary(), world.world().people
    sentinel = vocab.vocab_size - 1
    assert batch["encoder_input_tokens"].shape[0] == len(people) * k
    person = 7
    x = batch["encoder_input_tokens"][person * k]
    assert vocab.decode([int(t) for t in x if 0 < t < 259]).startswith(people[person].name)
    assert sentinel in x.tolist()
    values = {
        vocab.decode([int(t) for t in row if 2 < t < 259])
        for row in batch["decoder_target_tokens"][person * k : (person + 1) * k]
    }
    assert getattr(people[person], fact) in values and len(values) == k
    assert (batch["decoder_target_tokens"][:, 0] == sentinel).all()


@pytest.mark.parametrize("fact", sorted(fact_recall.CLOZES))
def test_recall_is_the_share_of_people_whose_true_value_scores_highest(fact, monkeypatch):
    vocab = registry.vocabulary()
    people = world.world().people

    def knows(first_n):  # a scorer that knows the facts of the first n people
        def score(config, params, batch):
            targets = batch["decoder_target_tokens"]
            k = len(targets) // len(people)
            out = np.zeros(len(targets))
            for i, row in enumerate(targets):
                p = people[i // k]
                value = vocab.decode([int(t) for t in row if 2 < t < 259])
                out[i] = 1.0 if (i // k < first_n and value == getattr(p, fact)) else -(i % k)
            return out

        return score

    monkeypatch.setattr(fact_recall.decoding, "score_batch", knows(len(people)))
    assert fact_recall.recall(None, None, fact) == 100.0
    monkeypatch.setattr(fact_recall.decoding, "score_batch", knows(50))
    first = np.mean(
        [getattr(p, fact) == fact_recall.CLOZES[fact][1](world.world())[0] for p in people[50:]]
    )  # the rest answer the first candidate
    assert fact_recall.recall(None, None, fact) == pytest.approx(25.0 + 75.0 * first)
