"""Metrics: exact match for generation, rank classification for multiple choice."""

import collections

import numpy as np


def exact_match(targets: list[str], predictions: list[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target after stripping whitespace."""
    hits = [t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True)]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def rank_classification_target(
    target_or_prediction, example=None, is_target: bool = False
) -> object:
    """seqio postprocess_fn: a target becomes (question index, is this choice correct)."""
    if is_target:
        return int(example["idx"]), bool(example["is_correct"])
    return target_or_prediction


def rank_classification(targets: list[tuple[int, bool]], scores: list[float]) -> dict:
    """Accuracy of argmax over each question's choice log-likelihoods (T0's protocol).

    targets: one (question index, is this choice correct) per row; scores: that row's
    log-likelihood. A question's choices are its rows in the order given. An exact tie
    goes to the first tied choice in that order (never to the correct one by preference),
    so a model that scores every choice equally is right only where choice 0 is correct.
    """
    by_question = collections.defaultdict(list)  # idx -> [(score, correct)] in row order
    for (idx, correct), score in zip(targets, scores, strict=True):
        by_question[idx].append((float(score), correct))
    # max() with a key returns the first maximal element: ties go to the earliest choice.
    hits = [max(choices, key=lambda c: c[0])[1] for choices in by_question.values()]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}
