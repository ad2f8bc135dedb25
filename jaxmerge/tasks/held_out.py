"""Held-out tasks: 4 categories, multiple choice, scored by rank classification.

T0's held-out categories (Sanh et al. 2022, arXiv:2110.08207): sentence
completion, natural language inference, coreference resolution and word sense
disambiguation. Each is never trained on but solvable by combining two held-in
skills over the same world (named in each docstring). The model scores every
choice as a target (`score_fn`); the highest log-likelihood is its answer.
Each generator maps a `random.Random` to {"inputs", "choices", "label"}.
"""

import random

from jaxmerge.tasks.world import JOBS, TOPICS, world

Example = dict


def completion_mood(rng: random.Random) -> Example:
    """Sentence completion = sentiment lexicon + story-style generation."""
    w = world()
    p = rng.choice(w.people)
    good = rng.random() < 0.5
    word = rng.choice(w.positive if good else w.negative)
    choices = ["smiled all day.", "cried all day."]
    return {
        "inputs": f"The trip of {p.name} was {word}, so {p.name}",
        "choices": choices,
        "label": 0 if good else 1,
    }


def nli_facts(rng: random.Random) -> Example:
    """NLI = extractive QA over a stated premise + paraphrase identification."""
    p = rng.choice(world().people)
    city, job = rng.choice(world().cities), rng.choice(JOBS)
    premise = f"{p.name} lives in {city} and works as a {job}."
    kind = rng.randrange(3)
    if kind == 0:
        hyp = f"{p.name} is a {job}."
    elif kind == 1:
        hyp = f"{p.name} is a {rng.choice([j for j in JOBS if j != job])}."
    else:
        hyp = f"{p.name} has a {rng.choice(['cat', 'dog', 'owl'])}."
    return {
        "inputs": f"premise: {premise} hypothesis: {hyp} Does the premise entail the hypothesis?",
        "choices": ["yes", "no", "maybe"],
        "label": kind,
    }


def coreference_city(rng: random.Random) -> Example:
    """Coreference = extractive QA (who is where) + structure of a referring phrase."""
    a, b = rng.sample(world().people, 2)
    ca, cb = rng.sample(world().cities, 2)
    first = rng.random() < 0.5
    target_city = ca if first else cb
    return {
        "inputs": f"{a.name} moved to {ca}. {b.name} moved to {cb}. "
        f"The one who moved to {target_city} is",
        "choices": [a.name, b.name],
        "label": 0 if first else 1,
    }


def word_sense_topic(rng: random.Random) -> Example:
    """Word sense = topic classification of each context + paraphrase (same or not)."""
    word = rng.choice(world().neutral)
    t1 = rng.choice(sorted(TOPICS))
    same = rng.random() < 0.5
    t2 = t1 if same else rng.choice([t for t in sorted(TOPICS) if t != t1])
    s1 = f"the {word} near the {' and '.join(rng.sample(TOPICS[t1], 2))}"
    s2 = f"the {word} near the {' and '.join(rng.sample(TOPICS[t2], 2))}"
    return {
        "inputs": f"s1: {s1}. s2: {s2}. Is '{word}' used in the same sense in s1 and s2?",
        "choices": ["yes", "no"],
        "label": 0 if same else 1,
    }


CATEGORIES = {
    "sentence_completion": {"completion_mood": completion_mood},
    "nli": {"nli_facts": nli_facts},
    "coreference": {"coreference_city": coreference_city},
    "word_sense": {"word_sense_topic": word_sense_topic},
}
