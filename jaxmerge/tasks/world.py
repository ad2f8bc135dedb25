"""A small generated world that every built-in task talks about.

Everything here is a pure function of `WORLD_SEED`: invented names (so no task can
be solved from outside knowledge), facts about each person (city, job, pet,
colour), an invented sentiment lexicon, topic vocabularies, synonym pairs. The
pretraining corpus states the facts (so closed-book QA measures what a base
model learned in pretraining), held-in tasks exercise single skills over them,
and held-out tasks need two skills at once.
"""

import dataclasses
import functools
import random

WORLD_SEED = 20240101
NUM_PEOPLE = 200
# Polar words per polarity. With 24 (and 24 neutral words of the same form) t5_nano stayed
# at the majority baseline on the sentiment tasks (60% vs 55% after 800 steps from
# scratch); with 8 it reaches 100% (benchmarks/dataset_learnability.py; the table in
# docs/models_tasks_training.md).
NUM_POLAR_WORDS = 8
NUM_NEUTRAL_WORDS = 24

CONSONANTS = "bdfgklmnprstvz"  # the letters of invented words
_VOWELS = "aeiou"

TOPICS = {  # topic -> its keywords (the topic classification tasks' signal)
    "sports": ["ball", "goal", "team", "match", "coach", "race", "score", "field"],
    "food": ["soup", "bread", "spice", "oven", "plate", "fruit", "salt", "cake"],
    "music": ["song", "drum", "choir", "tune", "violin", "band", "chord", "stage"],
    "travel": ["train", "ticket", "map", "hotel", "ship", "road", "airport", "trip"],
    "science": ["atom", "cell", "laser", "theory", "sample", "lab", "orbit", "gene"],
}
JOBS = ["baker", "smith", "farmer", "doctor", "painter", "sailor", "teacher", "guard"]
PETS = ["cat", "dog", "owl", "goat", "fish", "frog"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
SYNONYMS = [  # (word, synonym) pairs for paraphrase tasks
    ("big", "large"),
    ("small", "little"),
    ("quick", "fast"),
    ("happy", "glad"),
    ("begin", "start"),
    ("buy", "purchase"),
    ("end", "finish"),
    ("help", "assist"),
    ("near", "close to"),
    ("often", "frequently"),
    ("shut", "close"),
    ("smart", "clever"),
]
FILLERS = ["very", "really", "quite", "truly", "rather", "simply"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    city: str
    job: str
    pet: str
    colour: str


@dataclasses.dataclass(frozen=True)
class World:
    people: tuple[Person, ...]
    cities: tuple[str, ...]
    positive: tuple[str, ...]  # invented words that carry positive sentiment
    negative: tuple[str, ...]
    neutral: tuple[str, ...]  # invented words without sentiment


@functools.cache
def world() -> World:
    """The world, built once from WORLD_SEED."""
    rng = random.Random(WORLD_SEED)
    words: list[str] = []
    while len(words) < NUM_PEOPLE + 20 + 2 * NUM_POLAR_WORDS + NUM_NEUTRAL_WORDS:
        w = _word(rng, rng.choice([2, 3]))
        if w not in words:
            words.append(w)
    names, cities = words[:NUM_PEOPLE], words[NUM_PEOPLE : NUM_PEOPLE + 20]
    lex = words[NUM_PEOPLE + 20 :]
    people = tuple(
        Person(
            name=n.capitalize(),
            city=rng.choice(cities).capitalize(),
            job=rng.choice(JOBS),
            pet=rng.choice(PETS),
            colour=rng.choice(COLOURS),
        )
        for n in names
    )
    return World(
        people=people,
        cities=tuple(c.capitalize() for c in cities),
        positive=tuple(lex[:NUM_POLAR_WORDS]),
        negative=tuple(lex[NUM_POLAR_WORDS : 2 * NUM_POLAR_WORDS]),
        neutral=tuple(lex[2 * NUM_POLAR_WORDS :]),
    )


def biography(p: Person, rng: random.Random) -> str:
    """A few sentences stating a person's facts, in random order and wording."""
    facts = [
        rng.choice([f"{p.name} lives in {p.city}.", f"{p.name} is from {p.city}."]),
        rng.choice([f"{p.name} works as a {p.job}.", f"{p.name} is a {p.job}."]),
        f"{p.name} has a {p.pet}.",
        f"The favourite colour of {p.name} is {p.colour}.",
    ]
    rng.shuffle(facts)
    return " ".join(facts)
