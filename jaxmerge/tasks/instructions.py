"""Instruction-tuning tasks and the pretraining corpus, disjoint from held-in/out.

The instruction mixture makes the instruction-tuned base (as Flan-PaLM-2 is to
PaLM-2 in Yadav et al. 2024, arXiv:2410.03617): generic "follow the instruction"
string manipulations over the world's words, none of which is a held-in or
held-out skill. The pretraining corpus is unlabelled text about the world
(biographies, reviews, topical sentences) used with T5's span corruption
(Raffel et al. 2020, arXiv:1910.10683, §3.1.4).
"""

import random

from jaxmerge.tasks.world import TOPICS, biography, world


def _words(rng: random.Random, n: int) -> list[str]:
    return rng.sample(world().neutral + world().positive + world().negative, n)


def reverse_words(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 5))
    return {
        "inputs": f"Instruction: reverse the order of the words. Input: {' '.join(ws)}",
        "targets": " ".join(reversed(ws)),
    }


def uppercase(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(2, 4))
    return {
        "inputs": f"Instruction: write in capital letters. Input: {' '.join(ws)}",
        "targets": " ".join(ws).upper(),
    }


def count_words(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(1, 9))
    return {
        "inputs": f"Instruction: how many words are there? Input: {' '.join(ws)}",
        "targets": str(len(ws)),
    }


def last_word(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 6))
    return {"inputs": f"Instruction: copy the last word. Input: {' '.join(ws)}", "targets": ws[-1]}


def sort_words(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 5))
    return {
        "inputs": f"Instruction: sort the words alphabetically. Input: {' '.join(ws)}",
        "targets": " ".join(sorted(ws)),
    }


def repeat_word(rng: random.Random) -> dict:
    w, n = _words(rng, 1)[0], rng.randint(2, 4)
    return {
        "inputs": f"Instruction: repeat the word {n} times. Input: {w}",
        "targets": " ".join([w] * n),
    }


INSTRUCTIONS = {
    f.__name__: f
    for f in (reverse_words, uppercase, count_words, last_word, sort_words, repeat_word)
}


def pretraining_document(rng: random.Random) -> dict:
    """One unlabelled document: biographies, a review or topical sentences."""
    w = world()
    kind = rng.random()
    if kind < 0.6:
        text = " ".join(biography(p, rng) for p in rng.sample(w.people, 2))
    elif kind < 0.8:
        good = rng.random() < 0.5
        words = rng.sample(w.positive if good else w.negative, 2)
        mood = "loved" if good else "hated"
        text = f"{rng.choice(w.people).name} {mood} it. It was {words[0]} and {words[1]}."
    else:
        topic = rng.choice(sorted(TOPICS))
        text = f"A story about {topic}: " + " ".join(rng.sample(TOPICS[topic], 4)) + "."
    return {"text": text}
