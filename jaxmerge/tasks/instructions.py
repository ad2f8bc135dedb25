"""Instruction-tuning tasks and the pretraining corpus, disjoint from held-in/out.

The instruction mixture makes the instruction-tuned base (as Flan-PaLM-2 is to
PaLM-2 in Yadav et al. 2024, arXiv:2410.03617): generic "follow the instruction"
tasks over the world's words, none of which is a held-in or held-out skill. Two
families, in the spirit of Flan's and T0's training mixtures (Longpre et al.
2023, arXiv:2301.13688; Sanh et al. 2022, arXiv:2110.08207):

  word manipulation (Flan's "word" and string tasks): reverse, upper-case,
      count, copy the last word, sort, repeat;
  questions about the input that are answered from it (the answer formats
      Flan teaches: yes/no, pick one of the given choices, a word of the input):
      does the input contain a word, which choice occurs in it, which word comes
      right after a given one, is one word longer than another.

The second family teaches answering a question about the text in front of the
model, in the formats the held-out tasks are scored in, without any held-in or
held-out content: the inputs are lists of lexicon words, never people, cities,
facts, topics, sentiment or paraphrases, and tests/test_tasks.py checks that no
instruction input shares a run of five words with any held-in or held-out input.

The pretraining corpus is unlabelled text about the world (biographies, reviews,
topical sentences) used with T5's span corruption (Raffel et al. 2020,
arXiv:1910.10683, §3.1.4).
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


def contains_word(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 6))
    present = rng.random() < 0.5
    probe = rng.choice(ws) if present else _words(rng, 1)[0]
    while not present and probe in ws:
        probe = _words(rng, 1)[0]
    return {
        "inputs": f"Instruction: does the input contain the word {probe}? Input: {' '.join(ws)}",
        "targets": "yes" if present else "no",
    }


def choose_present(rng: random.Random) -> dict:
    ws = _words(rng, 8)
    text, absent = ws[:4], ws[4:7]
    choices = [rng.choice(text), *absent[: rng.randint(1, 2)]]
    answer = choices[0]
    rng.shuffle(choices)
    return {
        "inputs": f"Instruction: which of {', '.join(choices)} is in the input? "
        f"Input: {' '.join(text)}",
        "targets": answer,
    }


def word_after(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 6))
    i = rng.randrange(len(ws) - 1)
    return {
        "inputs": f"Instruction: which word comes right after {ws[i]}? Input: {' '.join(ws)}",
        "targets": ws[i + 1],
    }


def longer_word(rng: random.Random) -> dict:
    while True:
        a, b = _words(rng, 2)
        if len(a) != len(b):
            break
    return {
        "inputs": f"Instruction: is the first word longer than the second? Input: {a} {b}",
        "targets": "yes" if len(a) > len(b) else "no",
    }


WORD_MANIPULATION = (reverse_words, uppercase, count_words, last_word, sort_words, repeat_word)
QUESTIONS_ABOUT_THE_INPUT = (contains_word, choose_present, word_after, longer_word)
FAMILIES = {  # family -> its tasks; each is also a mixture, jaxmerge_instructions_<family>
    "word_manipulation": WORD_MANIPULATION,
    "questions_about_the_input": QUESTIONS_ABOUT_THE_INPUT,
}
INSTRUCTIONS = {f.__name__: f for f in WORD_MANIPULATION + QUESTIONS_ABOUT_THE_INPUT}


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
