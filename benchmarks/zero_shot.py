"""Is the instruction-tuned base a stronger zero-shot model than the pre-trained one?

    .venv/bin/python -m benchmarks.zero_shot BASES [BASES_SEED1 ...] \
        [--sizes nano micro tiny milli] [--splits validation test]

Issue 13's bar: the instruction-tuned base beats the pre-trained base zero-shot on the
held-out mixture by a margin larger than the spread over seeds. Each BASES root is one
seed's bases as `launch/demo_bases.sh` writes them (ROOT/<size>/{pretrained,
instruction_tuned}/checkpoint_N). Both bases of every (root, size) are rank-classified (a
checkpoint that several roots link, a shared pre-trained base, once) on
every row of the held-out tasks' splits (the Evaluator `jaxmerge eval` runs; validation
has 100 questions a task, test 200, train 2000: no model ever trains on a held-out task, so
`--splits train` is ten times the test split's unseen questions, 2 se of about 1.6 points
instead of 5), and the table gives per size and split:

  margin     instruction-tuned minus pre-trained, mean held-out accuracy (points)
  ± 2 se     twice the standard error of that margin from the rows alone (binomial,
             each task's accuracy p over n questions: se² = Σ p(1-p)/n / T², summed
             over the two models); a margin inside it is sampling noise
  seeds      the margins over the roots (seeds), and their spread (max - min)
  met        the smallest margin over seeds exceeds both the spread over seeds and 2 se
             (with one seed: "no" inside 2 se, else "spread unmeasured")

and, per held-out task, each root's two accuracies (where a margin comes from).

Writes nothing; prints Markdown for docs/models_tasks_training.md.
"""

import argparse
import math
import pathlib

from jaxmerge.cli import quiet

quiet.quiet_libraries("warning")
quiet.import_tensorflow()

from jaxmerge import model_set, tasks, training  # noqa: E402
from jaxmerge.evaluation import Evaluator  # noqa: E402
from jaxmerge.evaluation import run as eval_run  # noqa: E402
from jaxmerge.tasks import held_out, registry  # noqa: E402

BASES = ("pretrained", "instruction_tuned")


def margin_se(pretrained: dict[str, float], instruction_tuned: dict[str, float], n: dict) -> float:
    """Standard error (points) of the difference of two mean accuracies over tasks.

    Accuracies in points per task; n: questions per task. Unpaired (conservative for
    two models scored on the same rows): se² = Σ_m Σ_t p(1-p)/n_t / T².
    """
    var = 0.0
    for scores in (pretrained, instruction_tuned):
        for task, acc in scores.items():
            p = acc / 100
            var += p * (1 - p) / n[task]
    return 100 * math.sqrt(var) / len(pretrained)


def verdict(margins: list[float], se2: float) -> str:
    """The bar: every seed's margin > 0, the smallest above the spread and 2 se."""
    if len(margins) < 2:
        return "no" if margins[0] <= se2 else "spread unmeasured"
    spread = max(margins) - min(margins)
    return "yes" if min(margins) > max(spread, se2) else "no"


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="one root of bases per seed")
    parser.add_argument("--sizes", nargs="+", default=["nano", "micro", "tiny", "milli"])
    splits = ["train", "validation", "test"]
    parser.add_argument("--splits", nargs="+", default=splits[1:], choices=splits)
    args = parser.parse_args()
    tasks.register()
    questions = {
        split: {
            f"jaxmerge_{name}": len(registry.examples(name, generator, split))
            for datasets in held_out.CATEGORIES.values()
            for name, generator in datasets.items()
        }
        for split in args.splits
    }
    scores = {}  # (size, root, split, base) -> {task: accuracy}
    by_checkpoint = {}  # (resolved path, split) -> the same: roots that share a base link it
    for size in args.sizes:
        evaluators = {}
        for root in args.roots:
            for base in BASES:
                path = model_set.base_checkpoint(root, size, base)
                resolved = path.resolve()
                todo = [s for s in args.splits if (resolved, s) not in by_checkpoint]
                params = training.restore_checkpoint(path)[0] if todo else None
                for split in todo:
                    if split not in evaluators:
                        config = eval_run.model_config(str(path))
                        evaluators[split] = Evaluator(config, ["jaxmerge_held_out"], split=split)
                    metrics = evaluators[split].evaluate(params)
                    by_checkpoint[resolved, split] = {t: m["accuracy"] for t, m in metrics.items()}
                for split in args.splits:
                    got = scores[size, root, split, base] = by_checkpoint[resolved, split]
                    print(f"{size} {base} {split} ({root}): {_mean(got):.1f}", flush=True)
    print("\n| size | split | seed (root) | pre-trained | instruction-tuned | margin | ± 2 se |")
    print("|---|---|---|---:|---:|---:|---:|")
    summary = []
    for size in args.sizes:
        for split in args.splits:
            margins, ses = [], []
            for i, root in enumerate(args.roots):
                pt, it = (scores[size, root, split, b] for b in BASES)
                margin, se2 = _mean(it) - _mean(pt), 2 * margin_se(pt, it, questions[split])
                margins.append(margin)
                ses.append(se2)
                print(
                    f"| {size} | {split} | {i} ({pathlib.Path(root).name}) | {_mean(pt):.1f} "
                    f"| {_mean(it):.1f} | {margin:+.1f} | {se2:.1f} |"
                )
            summary.append((size, split, margins, max(ses)))
    print("\n| size | split | margins over seeds | spread | met |\n|---|---|---|---:|---|")
    for size, split, margins, se2 in summary:
        spread = f"{max(margins) - min(margins):.1f}" if len(margins) > 1 else "-"
        print(
            f"| {size} | {split} | {', '.join(f'{m:+.1f}' for m in margins)} "
            f"| {spread} | {verdict(margins, se2)} |"
        )
    names = sorted(questions[args.splits[0]])
    header = " | ".join(n.removeprefix("jaxmerge_") for n in names)
    print(f"\n| size | split | seed (root) | {header} |")
    print("|---|---|---|" + "---:|" * len(names))
    for size in args.sizes:
        for split in args.splits:
            for i, root in enumerate(args.roots):
                pt, it = (scores[size, root, split, b] for b in BASES)
                cells = " | ".join(f"{pt[n]:.0f} → {it[n]:.0f}" for n in names)
                print(f"| {size} | {split} | {i} ({pathlib.Path(root).name}) | {cells} |")


if __name__ == "__main__":
    try:
        main()
    except FileNotFoundError as e:  # a root without a base: one line, not a traceback
        raise SystemExit(str(e)) from None
