"""Held-out tasks: 4 categories, multiple choice, scored by rank classification.

T0's held-out categories (Sanh et al. 2022, arXiv:2110.08207): sentence
completion, natural language inference, coreference resolution and word sense
disambiguation. Each is never trained on but solvable by combining two held-in
skills over the same world (named in each docstring). The model scores every
choice as a target (`score_fn`); the highest log-likelihood is its answer.
Each generator maps a `random.Random` to {"inputs", "choices", "label"}.
"""

import random

from jaxmerge.tasks import held_in
from jaxmerge.tasks.world import TOPICS, world

Example = dict


# Each task asks in the words of one held-in dataset about the content of another (or of
# the same category in a new form), so its answer words are ones held-in training makes
# depend on the input. At t5_nano, rank classification otherwise follows the answer
# strings' prior: a model trained on all held-in tasks from scratch (2000 steps) scored
# at or below the majority answer on every earlier form (docs/models_tasks_training.md,
# "Held-out tasks that can move").


def completion_mood(rng: random.Random) -> Example:
    """Sentence completion = sentiment of a review (sentiment_review) + the feeling
    words of messages (sentiment_message): "So the reviewer was" [happy, sad]."""
    w = world()
    good = rng.random() < 0.5
    words = rng.sample(w.positive if good else w.negative, 3)
    thing = rng.choice(["road", "meal", "film", "room", "trip", "song"])
    return {
        "inputs": f"review: the {thing} was {', '.join(words)}. Happy or sad? So the reviewer was",
        "choices": ["happy", "sad"],
        "label": 0 if good else 1,
    }


def nli_facts(rng: random.Random) -> Example:
    """NLI = reading one fact out of a premise that states two (extractive_story's
    facts) + synonym identification (paraphrase_synonym): does "N lives in C. N is big."
    entail "N is large."? It does when s2's adjective is a synonym of s1's, not when it
    is a word of another pair; in the paraphrase tasks' frame (s1, s2) with NLI's
    question. s1 says more than s2, so the answer is entailment, not paraphrase.

    The earlier form, "premise: N lives in C and works as a J. hypothesis: N is a J2.
    Does the premise entail the hypothesis?" [yes, no, maybe], stayed at chance for every
    model through tiny, its multitask baselines and paraphrase experts included (25-42
    against a majority of 42 in the tiny ladder's scores). This one moves with the
    paraphrase experts (tiny's: 74 and 76 against a majority of 53 on validation); every
    other tiny model, the bases and multitask baselines included, stays at 45-55
    (docs/models_tasks_training.md).
    """
    a, b, other = held_in.synonym_pair(rng)
    name, city = rng.choice(world().people).name, rng.choice(world().cities)
    entailed = rng.random() < 0.5
    hypothesis = b if entailed else rng.choice(other)
    return {
        "inputs": f"s1: {name} lives in {city}. {name} is {a}. s2: {name} is {hypothesis}. "
        "Does s1 entail s2?",
        "choices": ["yes", "no"],
        "label": 0 if entailed else 1,
    }


def coreference_pronoun(rng: random.Random) -> Example:
    """Coreference = a pronoun ("they") that refers back to the story's person + the
    stories of extractive_story: the question names the person, the story says "they".

    Two-person forms (which person moved to a city, who has a pet) stayed at chance.
    """
    name = rng.choice(world().people).name
    facts = held_in.random_facts(rng, 2)
    (kind1, value1), (kind2, value2) = facts.items()
    other = rng.choice([v for v in held_in.fact_pools()[kind2] if v != value2])
    first = rng.random() < 0.5
    said1 = held_in.STORY[kind1][0].format(n=name, v=value1)
    said2 = held_in.STORY[kind2][0].format(n="they", v=value2)
    return {
        "inputs": f"{said1}. Then {said2}. {held_in.STORY[kind2][1].format(n=name)}",
        "choices": [value2, other] if first else [other, value2],
        "label": 0 if first else 1,
    }


def word_sense_topic(rng: random.Random) -> Example:
    """Word sense = topic classification (topic_news, topic_question) of the words around
    a word with no sense of its own; the choices are two topics, one the context's."""
    word = rng.choice(world().neutral)
    topics = sorted(TOPICS)
    topic = rng.choice(topics)
    other = rng.choice([t for t in topics if t != topic])
    a, b = rng.sample(TOPICS[topic], 2)
    first = rng.random() < 0.5
    return {
        "inputs": f"news: {word}. Which forum should this question go to: what does "
        f"'{word}' mean near the {a} and the {b}?",
        "choices": [topic, other] if first else [other, topic],
        "label": 0 if first else 1,
    }


CATEGORIES = {
    "sentence_completion": {"completion_mood": completion_mood},
    "nli": {"nli_facts": nli_facts},
    "coreference": {"coreference_pronoun": coreference_pronoun},
    "word_sense": {"word_sense_topic": word_sense_topic},
}
