"""Do the built-in tasks leave room? Scores one checkpoint on every held-in and held-out task.

    .venv/bin/python -m benchmarks.task_difficulty --checkpoint /tmp/mt/checkpoint_800 \
        [--split validation] [--max_examples 100]

Held-in: exact match of greedy decoding; held-out: rank classification accuracy, both
through `jaxmerge.evaluation.Evaluator` (what `jaxmerge eval` runs; the model config comes
from the checkpoint's shapes). Beside each score, the majority-answer baseline of the same
examples ("chance"): the share of the most common target (held-in) or label (held-out).
"""

import argparse
import collections

from jaxmerge.cli import quiet

quiet.quiet_libraries("info")
quiet.import_tensorflow()

from jaxmerge import checkpoints, training  # noqa: E402
from jaxmerge.evaluation import Evaluator  # noqa: E402
from jaxmerge.models import t5  # noqa: E402
from jaxmerge.tasks import held_in, held_out, registry  # noqa: E402


def majority(name: str, generator, split: str, n: int, key: str) -> float:
    """Percent of the first n examples whose `key` (targets or label) is the most common."""
    examples = registry.examples(name, generator, split)[:n]
    return 100 * collections.Counter(e[key] for e in examples).most_common(1)[0][1] / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_examples", type=int, default=100, help="questions per task")
    args = parser.parse_args()
    with checkpoints.open(args.checkpoint) as reader:
        config = t5.config_from_shapes({n: i.shape for n, i in reader.params.items()})
    params, step, _ = training.restore_checkpoint(args.checkpoint)
    print(f"checkpoint {args.checkpoint} (step {step}), split {args.split}")
    print("| kind | category | dataset | accuracy | majority baseline |\n|---|---|---|---|---|")
    for kind, categories, key in (
        ("held-in", held_in.CATEGORIES, "targets"),
        ("held-out", held_out.CATEGORIES, "label"),
    ):
        for category, datasets in categories.items():
            for name, generator in datasets.items():
                choices = len(registry.examples(name, generator, args.split)[0].get("choices", [0]))
                evaluator = Evaluator(  # held-out rows are (question, choice) pairs
                    config, f"jaxmerge_{name}", split=args.split,
                    max_examples=args.max_examples * choices,
                )  # fmt: skip
                accuracy = evaluator.evaluate(params)[f"jaxmerge_{name}"]["accuracy"]
                chance = majority(name, generator, args.split, args.max_examples, key)
                print(
                    f"| {kind} | {category} | {name} | {accuracy:.0f} | {chance:.0f} |", flush=True
                )


if __name__ == "__main__":
    main()
