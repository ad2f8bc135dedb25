"""Do learned merge coefficients beat the best fixed recipe? Issue 14's quality bar.

    .venv/bin/python -m benchmarks.learn_quality OUT --base pretrained

OUT is a model set (`launch/local_experts.sh OUT SIZE`). The experts of one base (every
held-in category that has one) are merged five ways:

  task arithmetic   θ₀ + λ Σᵢ τᵢ, λ grid-searched
  TIES              (density, λ) grid-searched (the methods' `ties`, global trim)
  learned, CMA-ES   one coefficient per expert (`jaxmerge learn --search cmaes`)
  learned, gradient one coefficient per expert per layer (`--search gradient
                    --granularity group`, Adam on the supervised loss)
  learned, gradient the same over TIES's trimmed, sign-elected τ̃ᵢ at the density the
  over TIES         TIES grid chose (AdaMerging++, `--preprocess ties`)
  average           (1/K) Σᵢ θᵢ, for reference

Everything is chosen on the validation split (the grids, the CMA-ES fitness, the
gradient path's early stopping) and every number is reported on the test split, in the
paper's normalized scores (Yadav et al. 2024, arXiv:2410.03617; jaxmerge.evaluation
.normalize): held-in divided by each expert's own test score, held-out by the base's
zero-shot test score. The learned merges are scored from the checkpoints `jaxmerge learn`
wrote, so the numbers are those of the bytes on disk. The bar: a learned merge above the
best grid-searched task arithmetic and TIES on held-in, with held-out not lower. Prints
a Markdown table and writes OUT/learn_quality/<base>.json.
"""

import argparse
import dataclasses
import json
import pathlib
import time

from jaxmerge.cli import quiet

quiet.quiet_libraries("info")
quiet.import_tensorflow()

import numpy as np  # noqa: E402

from jaxmerge import model_set, tasks, training  # noqa: E402
from jaxmerge.evaluation import normalize  # noqa: E402
from jaxmerge.evaluation import run as eval_run  # noqa: E402
from jaxmerge.evaluation.evaluator import Evaluator  # noqa: E402
from jaxmerge.learning import coefficients as coef_lib  # noqa: E402
from jaxmerge.learning import pool as pool_lib  # noqa: E402
from jaxmerge.learning import run as learn_run  # noqa: E402
from jaxmerge.methods import merge_trees  # noqa: E402
from jaxmerge.models import params as params_lib  # noqa: E402
from jaxmerge.tasks import held_in, held_out  # noqa: E402

TA_LAMS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
TIES_DENSITIES = (0.1, 0.2, 0.3, 0.5, 0.7)
TIES_LAMS = (0.5, 0.8, 1.0, 1.5, 2.0)


def accuracies(evaluator: Evaluator, params) -> dict[str, float]:
    return {t: normalize.primary_metric(t, m) for t, m in evaluator.evaluate(params).items()}


def layer_rules(names) -> tuple[tuple[str, str], ...]:
    """One group per encoder and decoder layer; embeddings, norms and the rest share '*'."""
    layers = sorted({"/".join(n.split("/")[:2]) for n in names if "/layers_" in n})
    return tuple((f"{layer}/.*", layer.replace("/layers_", "_")) for layer in layers)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="a model set (launch/local_experts.sh OUT SIZE)")
    parser.add_argument("--base", default="pretrained", choices=model_set.BASES)
    parser.add_argument("--categories", nargs="*", help="held-in categories (default all)")
    parser.add_argument("--max_examples", type=int, help="rows per task (default all)")
    parser.add_argument("--generations", type=int, default=12, help="CMA-ES generations")
    parser.add_argument("--popsize", type=int, default=8, help="CMA-ES candidates each")
    parser.add_argument("--steps", type=int, default=300, help="gradient steps")
    parser.add_argument("--learning_rate", type=float, default=1e-2)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    tasks.register()
    root = pathlib.Path(args.root)
    base = model_set.latest_checkpoint(root / args.base)
    experts = {}
    for c in args.categories or held_in.CATEGORIES:
        path = model_set.latest_checkpoint(root / "experts" / args.base / c)
        if path is not None:
            experts[c] = str(path)
    if base is None or len(experts) < 2:
        raise SystemExit(f"error: {root}: needs a {args.base} base and at least 2 experts")
    categories = list(experts)
    print(f"{len(experts)} experts of {args.base}: {', '.join(categories)}")

    held_in_tasks = {c: eval_run.expert_tasks(c) for c in categories}
    task_category = {t: c for c, ts in held_in_tasks.items() for t in ts}
    held_out_tasks = eval_run.leaf_tasks("jaxmerge_held_out")
    out_category = {f"jaxmerge_{d}": c for c, ds in held_out.CATEGORIES.items() for d in ds}
    config = eval_run.model_config(str(base))
    lengths = {"inputs": 256, "targets": 64}
    kwargs = dict(task_feature_lengths=lengths, max_examples=args.max_examples)
    validation = Evaluator(config, list(task_category), split="validation", **kwargs)
    test = Evaluator(config, list(task_category) + held_out_tasks, split="test", **kwargs)
    pool = pool_lib.load_pool(str(base), list(experts.values()), validation.mesh)
    base_tree = params_lib.unflatten(pool.base)

    # References: each expert on its own tasks, the base zero-shot on held-out.
    ref_val, ref_test = {}, {}
    for c, tree in zip(experts, pool.checkpoints, strict=True):
        params = params_lib.unflatten(tree)
        val, tst = accuracies(validation, params), accuracies(test, params)
        ref_val |= {t: val[t] for t in held_in_tasks[c]}
        ref_test |= {t: tst[t] for t in held_in_tasks[c]}
    ref_test |= {t: s for t, s in accuracies(test, base_tree).items() if t in held_out_tasks}
    roles = {t: normalize.TaskRole("held_in", c, "ref") for t, c in task_category.items()}
    roles |= {t: normalize.TaskRole("held_out", out_category[t], "ref") for t in held_out_tasks}

    def normalized(scores, references) -> dict:
        return normalize.normalized_scores(scores, roles, {"ref": references})

    def on_validation(params) -> float:
        return normalized(accuracies(validation, params), ref_val)["held_in"]

    rows = []

    def report(name, params, choice, validation_score):
        scores = accuracies(test, params)
        n = normalized(scores, ref_test)
        rows.append(
            {
                "merge": name,
                "choice": choice,
                "validation_held_in": validation_score,
                "held_in": n["held_in"],
                "held_out": n["held_out"],
                "held_in_accuracy": float(np.mean([scores[t] for t in task_category])),
                "held_out_accuracy": float(np.mean([scores[t] for t in held_out_tasks])),
            }
        )
        print(f"{name} ({choice}): test held-in {n['held_in']:.3f}, held-out {n['held_out']:.3f}")

    report("base", base_tree, "-", on_validation(base_tree))
    average = merge_trees("average", pool.checkpoints)
    report(
        "average", params_lib.unflatten(average), "-", on_validation(params_lib.unflatten(average))
    )

    spec = coef_lib.CoefficientSpec()  # task granularity, task-vector space
    grouping = coef_lib.groups(spec, pool.names)
    k = len(pool.checkpoints)

    def task_arithmetic(lam):
        coefs = np.full((1, k), lam, np.float32)
        flat = coef_lib.merge_as_engine(spec, coefs, grouping, pool.checkpoints, pool.base)
        return params_lib.unflatten(flat)

    print(f"references scored ({time.perf_counter() - start:.0f} s)")
    grid = {lam: on_validation(task_arithmetic(lam)) for lam in TA_LAMS}
    lam = max(grid, key=grid.get)
    print(f"task arithmetic grid (validation held-in): {grid}")
    report("task arithmetic", task_arithmetic(lam), f"λ={lam}", grid[lam])

    def ties(density, lam):
        flat = merge_trees("ties", pool.checkpoints, base=pool.base, density=density, lam=lam)
        return params_lib.unflatten(flat)

    grid = {(d, lam): on_validation(ties(d, lam)) for d in TIES_DENSITIES for lam in TIES_LAMS}
    d, lam = max(grid, key=grid.get)
    print(f"TIES grid (validation held-in): {grid}")
    report("TIES", ties(d, lam), f"density={d}, λ={lam}", grid[(d, lam)])
    print(f"grids searched ({time.perf_counter() - start:.0f} s)")

    out = root / "learn_quality" / args.base
    scorable = {t: r for t, r in ref_val.items() if r > 0}  # n(m, t) is undefined at 0
    if not scorable:
        raise SystemExit("error: every expert scores 0 on its own validation tasks")
    common = dict(
        experts=list(experts.values()),
        tasks=list(task_category),
        base=str(base),
        tasks_weights=dict.fromkeys(scorable, 1.0),
        references=scorable,
        max_examples=args.max_examples,
        task_feature_lengths=lengths,
        overwrite=True,
    )
    learned = {
        "learned, CMA-ES": learn_run.LearnConfig(
            output=str(out / "cmaes"),
            search="cmaes",
            generations=args.generations,
            popsize=args.popsize,
            **common,
        ),
        "learned, gradient": learn_run.LearnConfig(
            output=str(out / "gradient"),
            search="gradient",
            coefficients=coef_lib.CoefficientSpec(
                granularity="group", rules=layer_rules(pool.names)
            ),
            steps=args.steps,
            learning_rate=args.learning_rate,
            eval_period=25,
            patience=4,
            **common,
        ),
    }
    learned["learned, gradient over TIES"] = dataclasses.replace(
        learned["learned, gradient"],
        output=str(out / "gradient_ties"),
        preprocess="ties",
        density=d,
    )
    for name, learn_config in learned.items():
        summary = learn_run.learn(learn_config, log=lambda line: print(f"  {line}"))
        params, _, _ = training.restore_checkpoint(summary["merged"])
        coefs = {g: [round(x, 3) for x in v] for g, v in summary["coefficients"].items()}
        report(
            name,
            params,
            json.dumps(coefs) if len(coefs) == 1 else f"{len(coefs)} groups",
            summary["fitness"],
        )

    print()
    print(
        "| merge | chosen on validation | validation held-in | test held-in | test held-out "
        "| held-in accuracy | held-out accuracy |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['merge']} | {r['choice']} | {r['validation_held_in']:.3f} | "
            f"{r['held_in']:.3f} | {r['held_out']:.3f} | {r['held_in_accuracy']:.1f} | "
            f"{r['held_out_accuracy']:.1f} |"
        )
    fixed = [r for r in rows if r["merge"] in ("task arithmetic", "TIES")]
    best_fixed = max(fixed, key=lambda r: r["held_in"])
    for r in rows:
        if r["merge"].startswith("learned"):
            met = r["held_in"] > best_fixed["held_in"] and r["held_out"] >= best_fixed["held_out"]
            print(
                f"{r['merge']}: held-in {r['held_in']:.3f} vs best fixed "
                f"({best_fixed['merge']}) {best_fixed['held_in']:.3f}, held-out "
                f"{r['held_out']:.3f} vs {best_fixed['held_out']:.3f}: "
                f"bar {'met' if met else 'not met'}"
            )
    seconds = time.perf_counter() - start
    print(f"{seconds / 60:.1f} min")
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{args.base}.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "experts": experts,
                "seconds": seconds,
                "max_examples": args.max_examples,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
