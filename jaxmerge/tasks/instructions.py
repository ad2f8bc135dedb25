"""Instruction-tuning tasks and the pretraining corpus, disjoint from held-in/out.

The instruction mixture makes the instruction-tuned base (as Flan-PaLM-2 is to
PaLM-2 in Yadav et al. 2024, arXiv:2410.03617): generic "follow the instruction"
tasks over the world's words, none of which is a held-in or held-out skill. Six
families, in the spirit of Flan's and T0's training mixtures (Longpre et al.
2023, arXiv:2301.13688; Sanh et al. 2022, arXiv:2110.08207) and of the task
categories of Super-NaturalInstructions (Wang et al. 2022, arXiv:2204.07705)
that are neither T0 held-in nor held-out categories:

  word manipulation (Flan's "word" and string tasks): reverse, upper-case,
      count, copy the last word, sort, repeat;
  questions about the input that are answered from it (the answer formats
      Flan teaches: yes/no, pick one of the given choices, a word of the input):
      does the input contain a word, which choice occurs in it, which word comes
      right after a given one, is one word longer than another;
  list programs (NaturalInstructions' "program execution"): the word at a
      position, remove a word, remove repeats, swap the first and last words;
  spelling (its "spelling" and character tasks): first letters, spell the last word,
      which word starts with a letter, is a letter in the input;
  text matching (its "text matching", on two lists, never sentences): the word
      both lists share, are they equal, which has more words;
  answer verification (its "answer verification"): is a given answer to a
      question about the input right (yes/no).

The questions teach answering about the text in front of the model, in the formats the
held-out tasks are scored in (yes/no, one of two words, a word of the input),
without any held-in or held-out content: the inputs are lists of lexicon words,
never people, cities, facts, topics, sentiment or paraphrases, and
tests/test_tasks.py checks that no instruction input shares a run of five words
with any held-in or held-out input.

The pretraining corpus is unlabelled text about the world (biographies, reviews,
topical sentences) used with T5's span corruption (Raffel et al. 2020,
arXiv:1910.10683, §3.1.4).
"""

import random

from jaxmerge.tasks.world import CONSONANTS, TOPICS, biography, world


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


def word_at(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 5))
    k = rng.randrange(len(ws))
    return {
        "inputs": f"Instruction: what is word number {k + 1}? Input: {' '.join(ws)}",
        "targets": ws[k],
    }


def remove_word(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 5))
    drop = rng.choice(ws)
    return {
        "inputs": f"Instruction: remove the word {drop}. Input: {' '.join(ws)}",
        "targets": " ".join(w for w in ws if w != drop),
    }


def remove_repeats(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(2, 4))
    seq = ws + rng.choices(ws, k=rng.randint(1, 3))
    rng.shuffle(seq)
    return {
        "inputs": f"Instruction: remove repeated words. Input: {' '.join(seq)}",
        "targets": " ".join(dict.fromkeys(seq)),
    }


def swap_ends(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 5))
    return {
        "inputs": f"Instruction: swap the first and the last word. Input: {' '.join(ws)}",
        "targets": " ".join([ws[-1], *ws[1:-1], ws[0]]),
    }


def first_letters(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(2, 4))
    return {
        "inputs": f"Instruction: write the first letter of each word. Input: {' '.join(ws)}",
        "targets": " ".join(w[0] for w in ws),
    }


def spell_last(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(2, 3))
    return {
        "inputs": f"Instruction: spell the last word. Input: {' '.join(ws)}",
        "targets": " ".join(ws[-1]),
    }


def starts_with(rng: random.Random) -> dict:
    by_letter = {}
    for w in _words(rng, 12):
        by_letter.setdefault(w[0], w)
    ws = rng.sample(sorted(by_letter.values()), min(4, len(by_letter)))
    answer = rng.choice(ws)
    return {
        "inputs": f"Instruction: which word starts with {answer[0]}? Input: {' '.join(ws)}",
        "targets": answer,
    }


def has_letter(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(1, 3))
    present, used = rng.random() < 0.5, set("".join(ws))
    letters = sorted(used if present else set(CONSONANTS) - used)
    return {
        "inputs": f"Instruction: is the letter {rng.choice(letters)} in the input? "
        f"Input: {' '.join(ws)}",
        "targets": "yes" if present else "no",
    }


def _two_lists(first: list[str], second: list[str]) -> str:
    return f"First: {' '.join(first)}. Second: {' '.join(second)}."


def shared_word(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(5, 7))
    common, rest = ws[0], ws[1:]
    cut = rng.randint(1, len(rest) - 1)
    first, second = [common, *rest[:cut]], [common, *rest[cut:]]
    rng.shuffle(first)
    rng.shuffle(second)
    return {
        "inputs": f"Instruction: which word is in both lists? {_two_lists(first, second)}",
        "targets": common,
    }


def same_lists(rng: random.Random) -> dict:
    first = _words(rng, rng.randint(3, 4))
    second, same = list(first), rng.random() < 0.5
    while not same and second == first:
        second[rng.randrange(len(second))] = _words(rng, 1)[0]
    return {
        "inputs": f"Instruction: are the two lists equal? {_two_lists(first, second)}",
        "targets": "yes" if same else "no",
    }


def longer_list(rng: random.Random) -> dict:
    n, m = rng.sample(range(1, 6), 2)
    first, second = _words(rng, n), _words(rng, m)
    return {
        "inputs": f"Instruction: which list has more words? {_two_lists(first, second)}",
        "targets": "first" if n > m else "second",
    }


def check_word_after(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(3, 5))
    i = rng.randrange(len(ws) - 1)
    right = rng.random() < 0.5
    answer = ws[i + 1] if right else rng.choice([w for w in ws if w != ws[i + 1]])
    return {
        "inputs": f"Instruction: is the answer right? Question: what comes after {ws[i]}? "
        f"Answer: {answer}. Input: {' '.join(ws)}",
        "targets": "yes" if right else "no",
    }


def check_count(rng: random.Random) -> dict:
    ws = _words(rng, rng.randint(1, 5))
    right = rng.random() < 0.5
    answer = len(ws) if right else rng.choice([n for n in range(1, 7) if n != len(ws)])
    return {
        "inputs": f"Instruction: is the answer right? Question: how many words? "
        f"Answer: {answer}. Input: {' '.join(ws)}",
        "targets": "yes" if right else "no",
    }


WORD_MANIPULATION = (reverse_words, uppercase, count_words, last_word, sort_words, repeat_word)
QUESTIONS_ABOUT_THE_INPUT = (contains_word, choose_present, word_after, longer_word)
LIST_PROGRAMS = (word_at, remove_word, remove_repeats, swap_ends)
SPELLING = (first_letters, spell_last, starts_with, has_letter)
TEXT_MATCHING = (shared_word, same_lists, longer_list)
ANSWER_VERIFICATION = (check_word_after, check_count)
FAMILIES = {  # family -> its tasks; each is also a mixture, jaxmerge_instructions_<family>
    "word_manipulation": WORD_MANIPULATION,
    "questions_about_the_input": QUESTIONS_ABOUT_THE_INPUT,
    "list_programs": LIST_PROGRAMS,
    "spelling": SPELLING,
    "text_matching": TEXT_MATCHING,
    "answer_verification": ANSWER_VERIFICATION,
}
INSTRUCTIONS = {f.__name__: f for family in FAMILIES.values() for f in family}


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
