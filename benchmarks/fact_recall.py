"""How many of the pre-training text's facts does each base still hold? A cloze probe.

    .venv/bin/python -m benchmarks.fact_recall ROOT [ROOT ...] [--sizes milli]

The pre-training documents state every person's city and job ("N lives in C.", "N works
as a J.", `world.biography`); closed-book QA experts must find them in their base. Each
base of ROOT/<size>/{pretrained,instruction_tuned} is probed in the form it was
pre-trained on, span corruption, as LAMA probes a masked language model (Petroni et al.
2019, arXiv:1909.01066): for every person, inputs "N lives in <X>." and targets
"<X> C'" for each of the 20 cities C' (jobs: "N works as a <X>.", 8 jobs); the base
recalls the fact when the true value has the highest log-likelihood. Chance is 5% for
cities and 12.5% for jobs. Instruction tuning that wears off what pre-training stored
shows here as a drop from the pre-trained base (docs/models_tasks_training.md).

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
from jaxmerge.tasks import registry, world  # noqa: E402

BASES = ("pretrained", "instruction_tuned")
CLOZES = {  # fact -> (the sentence with the value masked, the candidate values)
    "city": (lambda p: f"{p.name} lives in ", lambda w: w.cities),
    "job": (lambda p: f"{p.name} works as a ", lambda w: world.JOBS),
}


def _row(ids: list[int], length: int) -> np.ndarray:
    return np.asarray(ids + [0] * (length - len(ids)), np.int32)


@functools.cache  # the same rows for every base probed
def cloze_batch(fact: str) -> tuple[dict[str, np.ndarray], int]:
    """Every (person, candidate) row of one fact's probe, person-major: the batch
    `score_batch` takes, and the number of candidates a person."""
    vocab, w = registry.vocabulary(), world.world()
    sentinel, eos = vocab.vocab_size - 1, vocab.eos_id
    prefix, candidates = CLOZES[fact][0], CLOZES[fact][1](w)
    inputs, targets = [], []
    for p in w.people:
        x = vocab.encode(prefix(p)) + [sentinel] + vocab.encode(".") + [eos]
        for value in candidates:
            inputs.append(x)
            targets.append([sentinel] + vocab.encode(value) + [eos])
    n_in, n_t = max(map(len, inputs)), max(map(len, targets))
    batch = {
        "encoder_input_tokens": np.stack([_row(x, n_in) for x in inputs]),
        "decoder_target_tokens": np.stack([_row(t, n_t) for t in targets]),
    }
    return batch, len(candidates)


def recall(config, params, fact: str) -> float:
    """Percent of people whose true value of `fact` scores highest among the candidates."""
    batch, k = cloze_batch(fact)
    w = world.world()
    truth = [CLOZES[fact][1](w).index(getattr(p, fact)) for p in w.people]
    scores = np.asarray(decoding.score_batch(config, params, batch)).reshape(len(w.people), k)
    return 100.0 * float(np.mean(scores.argmax(axis=1) == np.asarray(truth)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="roots of bases (launch/demo_bases.sh's layout)")
    parser.add_argument("--sizes", nargs="+", default=["milli"])
    args = parser.parse_args()
    print("| size | root | base | city recall | job recall |\n|---|---|---|---:|---:|")
    for size in args.sizes:
        for root in args.roots:
            for base in BASES:
                path = model_set.base_checkpoint(root, size, base)
                params, _, _ = training.restore_checkpoint(path)
                config = eval_run.model_config(str(path))
                cells = " | ".join(f"{recall(config, params, fact):.1f}" for fact in CLOZES)
                print(f"| {size} | {pathlib.Path(root).name} | {base} | {cells} |", flush=True)
    print("\n(chance: city 5.0, job 12.5; 200 people)")


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as e:  # a root without a base: one line, not a traceback
        raise SystemExit(str(e)) from None
