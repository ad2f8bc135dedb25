"""Held-in tasks: 8 categories x 2 datasets, mirroring T0's held-in kinds.

T0 (Sanh et al. 2022, "Multitask Prompted Training Enables Zero-Shot Task
Generalization", arXiv:2110.08207) trains on multiple-choice QA, extractive QA,
closed-book QA, sentiment, topic classification, structure-to-text,
summarization and paraphrase identification; "What Matters for Model Merging at
Scale?" (Yadav et al. 2024, arXiv:2410.03617) fine-tunes one expert per such
category. Each generator maps a `random.Random` to {"inputs", "targets"}
strings; all are scored by exact match of the greedy generation.
"""

import random

from jaxmerge.tasks.world import COLOURS, FILLERS, JOBS, PETS, SYNONYMS, TOPICS, biography, world

Example = dict[str, str]


def _people(rng: random.Random, k: int):
    return rng.sample(world().people, k)


# --- extractive QA: the answer is a span of the passage ---------------------------
# Each passage states several facts of different kinds (a city, a job, a pet, a colour,
# a code word) drawn at random, not from the world, so only reading finds them; the
# question names the kind, as SQuAD's "where" and "what" do. An earlier version asked
# which of three people moved to which of three cities, all of one kind: t5_nano and
# t5_tiny picked one of the three cities (33% against a majority of 10%, from scratch).
_KINDS = ("city", "job", "pet", "colour", "code")


def fact_pools() -> dict[str, tuple[str, ...]]:
    """kind -> the values a fact of that kind takes."""
    w = world()
    return {"city": w.cities, "job": JOBS, "pet": PETS, "colour": COLOURS, "code": w.neutral}


def random_facts(rng: random.Random, k: int) -> dict[str, str]:
    """k kinds of fact, each with a random value of its own kind."""
    pools = fact_pools()
    return {kind: rng.choice(pools[kind]) for kind in rng.sample(_KINDS, k)}


def extractive_kv(rng: random.Random) -> Example:
    facts = random_facts(rng, 4)
    passage = " ".join(f"{k}: {v}." for k, v in facts.items())
    ask = rng.choice(list(facts))
    return {"inputs": f"passage: {passage} question: what is the {ask}?", "targets": facts[ask]}


STORY = {  # kind -> (what the story says, what the question asks); both name the kind
    "city": ("{n} moved to the city of {v}", "What city did {n} move to?"),
    "job": ("{n} got a job as a {v}", "What job did {n} get?"),
    "pet": ("{n} bought a pet {v}", "What pet did {n} buy?"),
    "colour": ("{n} painted the door the colour {v}", "What colour did {n} paint the door?"),
    "code": ("{n} chose the code {v}", "What code did {n} choose?"),
}


def extractive_story(rng: random.Random) -> Example:
    name = _people(rng, 1)[0].name
    facts = random_facts(rng, 3)
    said = [STORY[k][0].format(n=name, v=v) for k, v in facts.items()]
    said[1:] = [s.removeprefix(f"{name} ") for s in said[1:]]
    ask = rng.choice(list(facts))
    story = f"{said[0]}, {said[1]} and {said[2]}."
    return {"inputs": f"{story} {STORY[ask][1].format(n=name)}", "targets": facts[ask]}


# --- closed-book QA: facts stated only in the pretraining corpus ------------------
def closed_book_city(rng: random.Random) -> Example:
    p = _people(rng, 1)[0]
    q = rng.choice([f"where does {p.name} live?", f"which city is {p.name} from?"])
    return {"inputs": f"question: {q}", "targets": p.city}


def closed_book_job(rng: random.Random) -> Example:
    p = _people(rng, 1)[0]
    q = rng.choice([f"what is the job of {p.name}?", f"what does {p.name} work as?"])
    return {"inputs": f"question: {q}", "targets": p.job}


# --- sentiment over the invented lexicon ------------------------------------------
def _sentiment_words(rng: random.Random, n: int) -> tuple[list[str], int]:
    w = world()
    score, words = 0, []
    for _ in range(n):
        kind = rng.choice(["pos", "neg", "neu"])
        words.append(rng.choice({"pos": w.positive, "neg": w.negative, "neu": w.neutral}[kind]))
        score += {"pos": 1, "neg": -1, "neu": 0}[kind]
    return words, score


def sentiment_review(rng: random.Random) -> Example:
    while True:
        words, score = _sentiment_words(rng, rng.choice([3, 5]))
        if score != 0:
            break
    thing = rng.choice(sum(TOPICS.values(), []))
    text = f"the {thing} was " + ", ".join(words)
    label = "positive" if score > 0 else "negative"
    return {"inputs": f"review: {text}. Is this review positive or negative?", "targets": label}


def sentiment_message(rng: random.Random) -> Example:
    """One polar lexicon word among neutral ones: the mood of a short message."""
    w = world()
    happy = rng.random() < 0.5
    words = [rng.choice(w.positive if happy else w.negative), *rng.sample(w.neutral, 2)]
    rng.shuffle(words)
    p = _people(rng, 1)[0]
    return {
        "inputs": f"message from {p.name}: today was {' and '.join(words)}. Happy or sad?",
        "targets": "happy" if happy else "sad",
    }


# --- topic classification ---------------------------------------------------------
def _topic_sentence(rng: random.Random, topic: str, n_key: int) -> str:
    words = rng.sample(TOPICS[topic], n_key) + rng.sample(world().neutral, 3)
    rng.shuffle(words)
    return " ".join(words)


def topic_news(rng: random.Random) -> Example:
    topic = rng.choice(sorted(TOPICS))
    return {"inputs": f"news: {_topic_sentence(rng, topic, 2)}. Topic?", "targets": topic}


def topic_question(rng: random.Random) -> Example:
    topic = rng.choice(sorted(TOPICS))
    q = f"who knows about the {' and the '.join(rng.sample(TOPICS[topic], 2))}?"
    return {"inputs": f"Which forum should this question go to: {q}", "targets": topic}


# --- structure to text ------------------------------------------------------------
def struct_table(rng: random.Random) -> Example:
    name = rng.choice(world().people).name
    city, job = rng.choice(world().cities), rng.choice(JOBS)
    return {
        "inputs": f"table: name[{name}] city[{city}] job[{job}]",
        "targets": f"{name} lives in {city} and works as a {job}.",
    }


def struct_triples(rng: random.Random) -> Example:
    name = rng.choice(world().people).name
    pet, colour = rng.choice(PETS), rng.choice(COLOURS)
    triples = [(name, "owns", pet), (name, "likes", colour)]
    rng.shuffle(triples)
    src = " ; ".join(" | ".join(t) for t in triples)
    return {
        "inputs": f"triples: {src}",
        "targets": " ".join(f"{a} {b} {c}." for a, b, c in triples),
    }


# --- summarization-like compression -----------------------------------------------
def summary_lead(rng: random.Random) -> Example:
    ps = _people(rng, 2)
    bio = biography(ps[0], rng)
    first = bio.split(". ")[0].rstrip(".") + "."
    return {"inputs": f"summarize: {bio} {biography(ps[1], rng)}", "targets": first}


def summary_compress(rng: random.Random) -> Example:
    p = _people(rng, 1)[0]
    core = [p.name, "is", "a", rng.choice(world().positive), rng.choice(JOBS), "from", p.city]
    words = []
    for w in core:
        if w not in (p.name, "is", "a", "from") and rng.random() < 0.6:
            words.append(rng.choice(FILLERS))
        words.append(w)
    return {"inputs": f"compress: {' '.join(words)}.", "targets": " ".join(core) + "."}


# --- paraphrase identification ----------------------------------------------------
def synonym_pair(rng: random.Random) -> tuple[str, str, tuple[str, str]]:
    """(a, b, other): a word, its synonym and another pair, either word of a pair first,
    so that a word drawn from `other` is as likely to stand anywhere as a or b (no one
    word tells "same" from "different"; see paraphrase_synonym)."""
    (a, b), other = rng.sample(SYNONYMS, 2)
    if rng.random() < 0.5:
        a, b = b, a
    return a, b, other


def paraphrase_synonym(rng: random.Random) -> Example:
    """s2 swaps s1's one adjective for its synonym (same) or for a word of another pair.

    Either word of a pair may stand in s1, and the "different" word is either word of
    another pair, so no word alone tells the answer: an earlier version drew s1's word
    from the pairs' first words, its synonym from their second and the other word from the
    first again, and t5_nano scored 82% (majority 53%) from that one-word cue. Without
    the cue, sentences that also said where the person lives ("N is big and lives in C.")
    kept t5_nano at 58% (majority 55%) after 800 steps from scratch, and no size's expert
    reached the bar; the one-clause sentences here take it to 85% (majority 57%;
    benchmarks/dataset_learnability.py), and the expert from either nano base to 98-100%
    in 1000 steps (docs/models_tasks_training.md).
    """
    a, b, other = synonym_pair(rng)
    name = _people(rng, 1)[0].name
    same = rng.random() < 0.5
    s2 = b if same else rng.choice(other)
    return {
        "inputs": f"s1: {name} is {a}. s2: {name} is {s2}. Same meaning?",
        "targets": "yes" if same else "no",
    }


def paraphrase_order(rng: random.Random) -> Example:
    """s2 names the same two people in the other order (same) or swaps one for a third.

    Learnable at t5_nano, slowly: 73% in 800 steps from scratch, 93% in 2000 (majority
    53%); a 1000-step nano expert of both paraphrase datasets scores 52-64 on its own
    training rows as on new ones: too few steps to learn it, not memorized.
    """
    ps = _people(rng, 3)
    s1 = f"{ps[0].name} and {ps[1].name} went to the {rng.choice(TOPICS['travel'])}."
    same = rng.random() < 0.5
    other = ps[0].name if same else ps[2].name
    s2 = s1.replace(f"{ps[0].name} and {ps[1].name}", f"{ps[1].name} and {other}")
    return {"inputs": f"s1: {s1} s2: {s2} Paraphrase?", "targets": "yes" if same else "no"}


# --- multiple-choice QA (answer generated as the option text) ----------------------
def _options(rng: random.Random, answer: str, pool) -> str:
    opts = rng.sample([x for x in pool if x != answer], 2) + [answer]
    rng.shuffle(opts)
    return " ".join(f"({'ABC'[i]}) {o}" for i, o in enumerate(opts))


def mc_pet(rng: random.Random) -> Example:
    p = _people(rng, 1)[0]
    text = f"{biography(p, rng)} What pet does {p.name} have? Options: {_options(rng, p.pet, PETS)}"
    return {"inputs": text, "targets": p.pet}


def mc_count(rng: random.Random) -> Example:
    p = _people(rng, 1)[0]
    a, b = rng.randint(1, 5), rng.randint(1, 4)
    thing = rng.choice(TOPICS["food"])
    q = f"{p.name} has {a} {thing}s and gets {b} more. How many {thing}s does {p.name} have?"
    answer = str(a + b)
    return {
        "inputs": f"{q} Options: {_options(rng, answer, [str(i) for i in range(1, 11)])}",
        "targets": answer,
    }


CATEGORIES = {  # category -> {dataset: generator}
    "extractive_qa": {"extractive_kv": extractive_kv, "extractive_story": extractive_story},
    "closed_book_qa": {"closed_book_city": closed_book_city, "closed_book_job": closed_book_job},
    "sentiment": {"sentiment_review": sentiment_review, "sentiment_message": sentiment_message},
    "topic": {"topic_news": topic_news, "topic_question": topic_question},
    "structure_to_text": {"struct_table": struct_table, "struct_triples": struct_triples},
    "summarization": {"summary_lead": summary_lead, "summary_compress": summary_compress},
    "paraphrase": {"paraphrase_synonym": paraphrase_synonym, "paraphrase_order": paraphrase_order},
    "multiple_choice_qa": {"mc_pet": mc_pet, "mc_count": mc_count},
}
