"""The Recycle scenario (Khalifa et al. 2024, arXiv:2412.04144): simplex weights over a
pool of generalists, searched by CMA-ES, against every input and the uniform and greedy
merges. Issue 14's second quality bar.

    JOBS=2 GENERALISTS="extractive_qa multiple_choice_qa closed_book_qa paraphrase \\
        summarization structure_to_text" launch/local_experts.sh OUT nano   # the pool
    .venv/bin/python -m benchmarks.recycle OUT --objective extractive_story mc_pet

The pool is OUT/generalists/pretrained/*: multitask runs on all held-in tasks, each with
one category's tasks 5x as often (`jaxmerge_held_in_tilted_<category>`), so that they
trade tasks off. For one objective (the mean accuracy over the named held-in datasets)
it reports, in the same units:

  each input    the generalist alone
  uniform       (1/K) Σᵢ θᵢ
  greedy        inputs added in order of their own validation score while the uniform
                merge of those chosen improves on validation
  optimized     Σᵢ αᵢ θᵢ, α on the simplex (softmax), CMA-ES on the validation objective
                (`jaxmerge learn --space simplex --search cmaes`), scored from the
                checkpoint it wrote; it starts (`--start`) at the uniform merge, or at the
                greedy one: weight 1 on the chosen inputs, START_FLOOR on the others, so
                that σ (`--sigma`, in log-weight units) reaches them

Choices are made on the validation split; the table reports validation and test, and
the held-out mixture's mean accuracy on test (zero-shot, never trained on). The bar:
optimized above every input, uniform and greedy on the test objective. Prints a Markdown
table and writes OUT/recycle/<objective>.json.
"""

import argparse
import json
import pathlib
import time

from benchmarks.learn_quality import accuracies
from jaxmerge import model_set, tasks, training
from jaxmerge.evaluation import run as eval_run
from jaxmerge.evaluation.evaluator import Evaluator
from jaxmerge.learning import coefficients as coef_lib
from jaxmerge.learning import pool as pool_lib
from jaxmerge.learning import run as learn_run
from jaxmerge.methods import merge_trees
from jaxmerge.models import params as params_lib

START_FLOOR = 0.1  # the greedy start's weight of an input greedy left out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="a model set with OUT/generalists/pretrained/*")
    parser.add_argument("--objective", nargs="+", required=True, help="held-in datasets")
    parser.add_argument("--max_examples", type=int, help="rows per task (default all)")
    parser.add_argument("--generations", type=int, default=12, help="CMA-ES generations")
    parser.add_argument("--popsize", type=int, default=8, help="CMA-ES candidates each")
    parser.add_argument("--start", choices=("greedy", "uniform"), default="greedy")
    parser.add_argument("--sigma", type=float, default=0.5, help="CMA-ES σ in log weights")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    tasks.register()
    root = pathlib.Path(args.root)
    members = sorted((root / "generalists" / "pretrained").glob("*"))
    paths = {m.name: model_set.latest_checkpoint(m) for m in members}
    paths = {name: str(p) for name, p in paths.items() if p is not None}
    if len(paths) < 2:
        raise SystemExit(f"error: {root}/generalists/pretrained: needs at least 2 checkpoints")
    objective = [t if t.startswith("jaxmerge_") else f"jaxmerge_{t}" for t in args.objective]
    held_out_tasks = eval_run.leaf_tasks("jaxmerge_held_out")
    config = eval_run.model_config(next(iter(paths.values())))
    lengths = {"inputs": 256, "targets": 64}
    kwargs = dict(task_feature_lengths=lengths, max_examples=args.max_examples)
    validation = Evaluator(config, objective, split="validation", **kwargs)
    test = Evaluator(config, objective + held_out_tasks, split="test", **kwargs)
    pool = pool_lib.load_pool(None, list(paths.values()), validation.mesh)
    name_tag = "+".join(t.removeprefix("jaxmerge_") for t in objective)
    print(f"pool of {len(paths)}: {', '.join(paths)}; objective {name_tag}")

    def on_validation(tree) -> float:
        scores = accuracies(validation, params_lib.unflatten(tree))
        return sum(scores[t] for t in objective) / len(objective)

    rows = []

    def report(name, tree, choice, validation_score):
        scores = accuracies(test, params_lib.unflatten(tree))
        row = {
            "merge": name,
            "choice": choice,
            "validation_objective": validation_score,
            "test_objective": sum(scores[t] for t in objective) / len(objective),
            "test_held_out": sum(scores[t] for t in held_out_tasks) / len(held_out_tasks),
            "test_scores": scores,
        }
        rows.append(row)
        print(
            f"{name} ({choice}): validation {validation_score:.1f}, test "
            f"{row['test_objective']:.1f}, held-out {row['test_held_out']:.1f}"
        )

    own = {}
    for name, tree in zip(paths, pool.checkpoints, strict=True):
        own[name] = on_validation(tree)
        report(f"input {name}", tree, "-", own[name])

    def uniform(trees):
        return merge_trees("average", trees) if len(trees) > 1 else trees[0]

    everything = uniform(pool.checkpoints)
    report("uniform", everything, f"1/{len(paths)}", on_validation(everything))

    order = sorted(own, key=own.get, reverse=True)
    index = {name: i for i, name in enumerate(paths)}
    chosen, best = [order[0]], own[order[0]]
    greedy = pool.checkpoints[index[order[0]]]
    for name in order[1:]:
        candidate = uniform([pool.checkpoints[index[n]] for n in chosen + [name]])
        score = on_validation(candidate)
        if score <= best:
            break
        chosen, best, greedy = chosen + [name], score, candidate
    report("greedy", greedy, " + ".join(chosen), best)
    print(f"fixed merges scored ({time.perf_counter() - start:.0f} s)")

    out = root / "recycle" / name_tag
    start_weights = None  # uniform
    if args.start == "greedy":
        start_weights = tuple(1.0 if n in chosen else START_FLOOR for n in paths)
    print(f"CMA-ES from the {args.start} merge, sigma {args.sigma}")
    summary = learn_run.learn(
        learn_run.LearnConfig(
            experts=list(paths.values()),
            tasks=objective,
            output=str(out),
            search="cmaes",
            coefficients=coef_lib.CoefficientSpec(space="simplex", init_weights=start_weights),
            generations=args.generations,
            sigma=args.sigma,
            popsize=args.popsize,
            max_examples=args.max_examples,
            task_feature_lengths=lengths,
            overwrite=True,
        ),
        log=lambda line: print(f"  {line}"),
    )
    merged, _, _ = training.restore_checkpoint(summary["merged"])
    weights = summary["coefficients"]["all"]
    choice = ", ".join(f"{n} {w:.2f}" for n, w in zip(paths, weights, strict=True))
    report("optimized", params_lib.flatten(merged), choice, summary["fitness"])

    print()
    print(
        "| merge | chosen on validation | validation objective | test objective | test held-out |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['merge']} | {r['choice']} | {r['validation_objective']:.1f} | "
            f"{r['test_objective']:.1f} | {r['test_held_out']:.1f} |"
        )
    optimized = rows[-1]
    rivals = rows[:-1]
    best_rival = max(rivals, key=lambda r: r["test_objective"])
    met = optimized["test_objective"] > best_rival["test_objective"]
    verdict = "met" if met else "not met"
    rows_scored = sum(test.num_examples[t] for t in objective)
    p = optimized["test_objective"] / 100
    standard_error = 100 * (p * (1 - p) / rows_scored) ** 0.5  # binomial, of one score
    print(
        f"optimized {optimized['test_objective']:.1f} vs best other ({best_rival['merge']}) "
        f"{best_rival['test_objective']:.1f} on the test objective: bar {verdict} "
        f"({rows_scored} test rows: one score's standard error is {standard_error:.1f} points)"
    )
    seconds = time.perf_counter() - start
    print(f"{seconds / 60:.1f} min")
    record = {"objective": objective, "pool": paths, "rows": rows, "met": met, "seconds": seconds}
    record["test_rows"], record["standard_error"] = rows_scored, standard_error
    record["search"] = {"start": args.start, "sigma": args.sigma, "generations": args.generations}
    record["search"].update(popsize=args.popsize, max_examples=args.max_examples)
    (root / "recycle" / f"{name_tag}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
