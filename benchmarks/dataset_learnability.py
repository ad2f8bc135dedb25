"""Can one ladder size learn each held-in dataset? From scratch, one dataset at a time.

    .venv/bin/python -m benchmarks.dataset_learnability --size nano --steps 800 \
        [--datasets sentiment_message paraphrase_order ...] [--out /tmp/learnability]

Issue 13's check before any scaling: a held-in dataset the smallest size cannot learn is
a dataset to redesign, not a threshold to lower. Each dataset trains its own model from
random initialization with the expert recipe (gin_configs/runs/expert.gin: lr 0.02 after
50 warm-up steps, decayed linearly to 0.002 over --steps; packed rows fitted to the
dataset), then is scored on its validation split (greedy exact match, the Evaluator
`jaxmerge eval` runs) beside the majority-answer baseline and the halfway bar
(`model_set.halfway_bar`). From scratch isolates the data from the base: an
expert fine-tuned from a base that scores below this has a base (or budget) problem.

Prints a Markdown table and writes OUT/learnability.json.
"""

import argparse
import json
import pathlib
import tempfile
import time

from jaxmerge.cli import quiet

quiet.quiet_libraries("warning")
quiet.import_tensorflow()

import gin  # noqa: E402

from jaxmerge import model_set, tasks, training  # noqa: E402
from jaxmerge.cli import gin_flags  # noqa: E402
from jaxmerge.evaluation.evaluator import Evaluator  # noqa: E402
from jaxmerge.tasks import held_in  # noqa: E402


def learn(size: str, dataset: str, steps: int, model_dir: pathlib.Path, seed: int) -> dict:
    """Trains `size` from scratch on one held-in dataset; its validation accuracy."""
    task = f"jaxmerge_{dataset}"
    gin.clear_config()
    gin_flags.parse(
        [f"gin_configs/models/t5_{size}.gin", "gin_configs/runs/expert.gin"],
        [
            f"MODEL_DIR = '{model_dir}'",
            f"MIXTURE_OR_TASK_NAME = '{task}'",
            "INITIAL_CHECKPOINT_PATH = None",
            f"TRAIN_STEPS = {steps}",
            f"DECAY_STEPS = {steps}",
            f"SAVE_PERIOD = {steps}",
            f"RANDOM_SEED = {seed}",
        ],
    )
    start = time.perf_counter()
    metrics = gin.get_configurable(training.train)()
    config, lengths = gin_flags.macro("MODEL"), gin_flags.macro("TASK_FEATURE_LENGTHS")
    params, _, _ = training.restore_checkpoint(model_dir / f"checkpoint_{steps}")
    evaluator = Evaluator(config, [task], split="validation", task_feature_lengths=lengths)
    accuracy = evaluator.evaluate(params)[task]["accuracy"]
    majority = model_set.majority_baseline(task)
    halfway = model_set.halfway_bar(majority)
    return {
        "dataset": dataset,
        "size": size,
        "steps": steps,
        "seed": seed,
        "accuracy": accuracy,
        "majority": majority,
        "halfway": halfway,
        "met": accuracy >= halfway,
        "final_loss": float(metrics["loss"]),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="nano", help="gin_configs/models/t5_SIZE.gin")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    datasets = [d for ds in held_in.CATEGORIES.values() for d in ds]
    parser.add_argument("--datasets", nargs="+", default=datasets, choices=datasets)
    parser.add_argument("--out", default=None, help="where to write learnability.json")
    args = parser.parse_args()
    tasks.register()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, dataset in enumerate(args.datasets, 1):
            print(f"[{i}/{len(args.datasets)}] {dataset}: {args.steps} steps", flush=True)
            row = learn(args.size, dataset, args.steps, pathlib.Path(scratch, dataset), args.seed)
            rows.append(row)
            print(f"  {row['accuracy']:.0f} (majority {row['majority']:.0f})", flush=True)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "learnability.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{args.size}, {args.steps} steps from scratch (validation, exact match)\n")
    print("| dataset | accuracy | majority | halfway bar | met | s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['accuracy']:.0f} | {r['majority']:.0f} | {r['halfway']:.1f} "
            f"| {'yes' if r['met'] else 'no'} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
