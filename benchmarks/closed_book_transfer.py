"""Closed-book experts: what they memorize, and what they carry to the other phrasing.

    .venv/bin/python -m benchmarks.closed_book_transfer ROOT [ROOT ...]

Each closed-book dataset asks one fact of a person (`held_in.closed_book_city`,
`closed_book_job`) in one of two phrasings, and the splits route each question by its own
words, so most validation and test questions ask a fact whose other phrasing is a
training question. Below milli the bases recall no corpus fact (benchmarks/fact_recall.py),
so an expert can answer only those: it must tie the answer to the person, not to the
question's words (the knowledge extraction of Allen-Zhu and Li 2023, arXiv:2309.14316).
For every closed-book expert of each set ROOT (launch/local_experts.sh's layout:
ROOT/experts/<base>/closed_book_qa), greedy exact match on its own training questions,
on the validation questions, and on the validation and test questions split into those
whose person's fact a training question asks ("seen") and the rest. The last line gives
each dataset's ceiling: the share of validation questions that are seen, plus chance on
the rest (docs/models_tasks_training.md, "Why the experts below milli miss").

Writes nothing; prints a Markdown table.
"""

import argparse
import functools
import pathlib

import numpy as np

from jaxmerge.cli import quiet

quiet.quiet_libraries("warning")
quiet.import_tensorflow()

from jaxmerge import model_set, training  # noqa: E402
from jaxmerge.evaluation import run as eval_run  # noqa: E402
from jaxmerge.models import decoding  # noqa: E402
from jaxmerge.tasks import held_in, registry, world  # noqa: E402

DATASETS = held_in.CATEGORIES["closed_book_qa"]  # name -> generator
MAX_ANSWER_LENGTH = 16  # bytes: the longest city or job word is shorter


@functools.cache
def _names() -> frozenset[str]:
    return frozenset(p.name for p in world.world().people)


def subject(inputs: str) -> str:
    """The person a closed-book question asks about (the one word that is a name)."""
    found = [w for w in inputs.rstrip("?").split() if w in _names()]
    if len(found) != 1:
        raise ValueError(f"closed-book question {inputs!r} names {len(found)} people, not 1")
    return found[0]


@functools.cache
def question_groups(dataset: str) -> dict[str, tuple[dict, ...]]:
    """{"train", "validation", "seen", "unseen"}: a dataset's training and validation
    questions; and its validation and test questions whose person a training question
    asks about (seen) or not (unseen)."""
    generator = DATASETS[dataset]
    train, validation, test = (
        registry.examples(dataset, generator, split) for split in ("train", "validation", "test")
    )
    held = validation + test
    asked = {subject(e["inputs"]) for e in train}
    return {
        "train": train,
        "validation": validation,
        "seen": tuple(e for e in held if subject(e["inputs"]) in asked),
        "unseen": tuple(e for e in held if subject(e["inputs"]) not in asked),
    }


def ceiling(dataset: str) -> float:
    """Percent of validation questions a model knowing only the training questions' facts
    can answer: the seen ones, and the rest at chance (one of the dataset's answers)."""
    groups = question_groups(dataset)
    seen_inputs = {e["inputs"] for e in groups["seen"]}
    values = {e["targets"] for e in groups["train"]}
    val = groups["validation"]
    seen = sum(e["inputs"] in seen_inputs for e in val)
    return 100.0 * (seen + (len(val) - seen) / len(values)) / len(val)


def answers(config, params, examples) -> dict[str, str]:
    """inputs -> the greedy answer, for `examples` decoded in one batch."""
    vocab = registry.vocabulary()
    rows = [vocab.encode(e["inputs"]) + [vocab.eos_id] for e in examples]
    tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    out = np.asarray(decoding.greedy_decode(config, params, tokens, MAX_ANSWER_LENGTH))
    predictions = [vocab.decode([int(t) for t in row if t > vocab.eos_id]) for row in out]
    return {e["inputs"]: p for e, p in zip(examples, predictions, strict=True)}


def accuracy(examples, answered: dict[str, str]) -> float:
    """Exact match (the held-in metric) of `examples` against `answers`' output."""
    return 100.0 * float(np.mean([answered[e["inputs"]] == e["targets"] for e in examples]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="model sets (launch/local_experts.sh's OUT)")
    args = parser.parse_args()
    groups = {d: question_groups(d) for d in DATASETS}
    names = " | ".join(d.removeprefix("closed_book_") for d in DATASETS)
    print(
        f"| set | expert | step | own training questions ({names}) | validation ({names}) "
        f"| seen ({names}) | unseen ({names}) |\n|---|---|---:|---|---|---|---|"
    )
    for root in args.roots:
        for base in model_set.BASES:
            directory = pathlib.Path(root, "experts", base, "closed_book_qa")
            path = model_set.latest_checkpoint(directory)
            if path is None:
                raise FileNotFoundError(f"{directory}: no checkpoint_<step>")
            params, step, _ = training.restore_checkpoint(path)
            config = eval_run.model_config(str(path))
            answered = {  # one batch a dataset: validation lies inside seen + unseen
                d: answers(config, params, g["train"] + g["seen"] + g["unseen"])
                for d, g in groups.items()
            }
            cells = [
                " / ".join(f"{accuracy(groups[d][g], answered[d]):.0f}" for d in DATASETS)
                for g in ("train", "validation", "seen", "unseen")
            ]
            print(f"| {root} | {base} | {step} | " + " | ".join(cells) + " |", flush=True)
    sizes = ", ".join(
        f"{d.removeprefix('closed_book_')}: train {len(g['train'])}, validation "
        f"{len(g['validation'])}, seen {len(g['seen'])}, unseen {len(g['unseen'])}, "
        f"ceiling {ceiling(d):.1f}"
        for d, g in groups.items()
    )
    print(f"\n(questions: {sizes})")


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as e:  # a set without its closed-book experts: one line
        raise SystemExit(str(e)) from None
