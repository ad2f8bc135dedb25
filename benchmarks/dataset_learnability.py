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

With --held_out it trains one model the same way on all held-in tasks (jaxmerge_held_in,
a multitask model from scratch) and rank-classifies each held-out task beside its
majority answer: the check that a held-out task can move at all at this size.

    .venv/bin/python -m benchmarks.dataset_learnability --size nano --steps 2000 --held_out

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
from jaxmerge.tasks import lengths as lengths_lib  # noqa: E402


def learn(
    size: str,
    train_task: str,
    eval_mixture: str,
    steps: int,
    model_dir: pathlib.Path,
    seed: int,
) -> list[dict]:
    """Trains `size` from scratch on `train_task`; one row per task of `eval_mixture`."""
    gin.clear_config()
    gin_flags.parse(
        [f"gin_configs/models/t5_{size}.gin", "gin_configs/runs/expert.gin"],
        [
            f"MODEL_DIR = '{model_dir}'",
            f"MIXTURE_OR_TASK_NAME = '{train_task}'",
            "INITIAL_CHECKPOINT_PATH = None",
            f"TRAIN_STEPS = {steps}",
            f"DECAY_STEPS = {steps}",
            f"SAVE_PERIOD = {steps}",
            f"RANDOM_SEED = {seed}",
        ],
    )
    start = time.perf_counter()
    metrics = gin.get_configurable(training.train)()
    seconds = time.perf_counter() - start
    config = gin_flags.macro("MODEL")
    lengths = lengths_lib.fitted_feature_lengths(eval_mixture)  # every example untruncated
    eval_tasks = lengths_lib.task_names(eval_mixture)
    params, _, _ = training.restore_checkpoint(model_dir / f"checkpoint_{steps}")
    evaluator = Evaluator(config, eval_tasks, split="validation", task_feature_lengths=lengths)
    scores = evaluator.evaluate(params)
    rows = []
    for task in eval_tasks:
        majority = model_set.majority_baseline(task)
        halfway = model_set.halfway_bar(majority)
        accuracy = scores[task]["accuracy"]
        rows.append({
            "dataset": task.removeprefix("jaxmerge_"),
            "trained_on": train_task,
            "size": size,
            "steps": steps,
            "seed": seed,
            "accuracy": accuracy,
            "majority": majority,
            "halfway": halfway,
            "met": accuracy >= halfway,
            "final_loss": float(metrics["loss"]),
            "seconds": seconds,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="nano", help="gin_configs/models/t5_SIZE.gin")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    datasets = [d for ds in held_in.CATEGORIES.values() for d in ds]
    parser.add_argument("--datasets", nargs="+", default=datasets, choices=datasets)
    parser.add_argument(
        "--held_out",
        action="store_true",
        help="train once on all held-in tasks; score the held-out tasks (rank classification)",
    )
    parser.add_argument("--out", default=None, help="where to write learnability.json")
    args = parser.parse_args()
    tasks.register()
    if args.held_out:  # (train on, score on)
        runs = [("jaxmerge_held_in", "jaxmerge_held_out")]
    else:
        runs = [(f"jaxmerge_{d}", f"jaxmerge_{d}") for d in args.datasets]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (train_task, eval_mixture) in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {train_task}: {args.steps} steps", flush=True)
            model_dir = pathlib.Path(scratch, train_task)
            for row in learn(args.size, train_task, eval_mixture, args.steps, model_dir, args.seed):
                rows.append(row)
                print(f"  {row['dataset']}: {row['accuracy']:.0f} (majority {row['majority']:.0f})")
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "learnability.json").write_text(json.dumps(rows, indent=1) + "\n")
    metric = "rank classification" if args.held_out else "exact match"
    print(f"\n{args.size}, {args.steps} steps from scratch (validation, {metric})\n")
    print("| dataset | accuracy | majority | halfway bar | met | s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['accuracy']:.0f} | {r['majority']:.0f} | {r['halfway']:.1f} "
            f"| {'yes' if r['met'] else 'no'} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
