"""What learning merge coefficients costs, next to what it is compared with.

    .venv/bin/python -m benchmarks.learn [--size small] [--experts 8] [--batch 4] \
        [--candidates 50]

1. Gradient path: one step of layer-wise learning (`jaxmerge.learning.gradient`, one
   coefficient per checkpoint per layer, supervised loss) over K experts, against one
   plain fine-tuning step (`jaxmerge.training`, Adafactor) of the same model on the same
   synthetic batch (inputs 256, targets 64), each in a process of its own, so that each
   one's peak RSS is its own. Goals: time ≤ 1.3x the fine-tuning step; memory ≤
   (K + 3) x model size (float32) above the process's start-up footprint.
2. Search path: a CMA-ES run of `--candidates` candidates on the tiny model over K
   checkpoints (task granularity, simplex space), each scored on a held-in task by the one
   Evaluator; wall time split into merging (the engine's kernels), evaluating, and the
   optimizer (ask/tell).

For reference, FusionBench's layer-wise AdaMerging rebuilds the merged model every
step: 2 s/step for a 162M model on this CPU (the issue's measurement).

Results on the 2-core VM (shared with other jobs), `python -m benchmarks.learn`:

    gradient path, small (44.5M parameters), K=8:
    | step | s/step | peak RSS GB | above start GB | in model sizes |
    |---|---|---|---|---|
    | fine-tuning (Adafactor) | 2.54 | 2.50 | 1.62 | 9.1 |
    | layer-wise learning (Adam) | 2.83 | 4.23 | 3.35 | 18.8 |
    time ratio learn / fine-tune: 1.12 (goal <= 1.3)
    memory beyond the fine-tuning step: 1.73 GB = 9.7 model sizes; goal (K + 3) = 11

    search path, tiny, K=8, 50 candidates, 2 tasks x 64 rows each:
    | total s | merging s | evaluating s | optimizer and rest s |
    |---|---|---|---|
    | 18.4 | 1.6 | 16.7 | 0.0 |

"Above start" counts what the step's process holds beyond the runtime (model, optimizer
state, gradients, activations of batch 4 x (256 + 64) tokens, XLA's compilation): 9.1
model sizes for fine-tuning itself, so the learning step is read against it: the K = 8
checkpoints and the base in memory (9 model sizes) and the merged model. Before the merge
was rematerialized in the backward pass (`jax.checkpoint` in `gradient.make_step`), XLA
kept the K task vectors as residuals: 3.90 s/step (1.54x) and 26.7 model sizes.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

STEPS = 3


def _child(kind: str, size: str, experts: int, batch: int) -> dict:
    """Runs in its own process: times `kind` ("finetune" or "learn") and reports peak RSS."""
    from jaxmerge.cli import quiet

    quiet.quiet_libraries("info")
    import jax
    import numpy as np
    import optax

    from benchmarks.train_speed import synthetic_batch
    from jaxmerge import training
    from jaxmerge.cli import gin_flags
    from jaxmerge.learning import coefficients as coef_lib
    from jaxmerge.learning import gradient
    from jaxmerge.learning.pool import Pool
    from jaxmerge.models import params, t5

    gin_flags.parse([f"gin_configs/models/t5_{size}.gin"], ["DROPOUT_RATE = 0.0"])
    config = gin_flags.macro("MODEL")  # (the gin files import seqio, hence TensorFlow)
    jax.numpy.zeros(1).block_until_ready()  # the runtime is up: what follows is the run's
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tree = params.unbox(t5.init_params(config, jax.random.key(0)))
    model_bytes = sum(x.size * 4 for x in jax.tree.leaves(tree))
    data = jax.device_put(synthetic_batch(batch, np.random.default_rng(0)))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if kind == "finetune":
        tx = training.adafactor(training.constant(1e-3))
        step = training.make_train_step(config, tx)
        state = (tree, tx.init(tree))

        def run_step(state):
            p, o, loss = step(*state, data, jax.random.key(0), 0)
            return (p, o), loss
    else:
        base = params.flatten(tree)
        pool_trees = [
            {n: a + 0.01 * (i + 1) for n, a in base.items()} for i in range(experts)
        ]  # K checkpoints in memory (their values do not change the cost)
        pool = Pool([f"e{i}" for i in range(experts)], "base", pool_trees, base, list(base))
        layers = max(config.num_encoder_layers, config.num_decoder_layers)
        rules = tuple((rf"(en|de)coder/layers_{i}/.*", f"layer{i}") for i in range(layers))
        spec = coef_lib.CoefficientSpec("group", rules=rules)
        grouping = coef_lib.groups(spec, pool.names)
        tx = optax.adam(1e-3)
        step, _ = gradient.make_step(spec, grouping, config, tx, "supervised")
        raw = jax.numpy.asarray(coef_lib.initial_raw(spec, len(grouping.names), experts))
        state = (raw, tx.init(raw))

        def run_step(state):
            r, o, loss = step(*state, pool.checkpoints, pool.base, data)
            return (r, o), loss

    state, loss = run_step(state)  # compile
    jax.block_until_ready(loss)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        state, loss = run_step(state)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "kind": kind,
        "seconds": min(times),
        "model_bytes": model_bytes,
        "rss_start": rss_start,
        "rss_model": rss_model,
        "rss_peak": rss_peak,
    }


def gradient_path(size: str, experts: int, batch: int) -> None:
    results = {}
    for kind in ("finetune", "learn"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.learn",
                "--child",
                kind,
                "--size",
                size,
                "--experts",
                str(experts),
                "--batch",
                str(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    ft, ln = results["finetune"], results["learn"]
    size_gb = ft["model_bytes"] / 1e9
    print(f"gradient path, {size} ({ft['model_bytes'] / 4e6:.1f}M parameters), K={experts}:")
    print("| step | s/step | peak RSS GB | above start GB | in model sizes |")
    print("|---|---|---|---|---|")
    for name, r in (("fine-tuning (Adafactor)", ft), ("layer-wise learning (Adam)", ln)):
        above = (r["rss_peak"] - r["rss_start"]) / 1e9
        row = f"| {name} | {r['seconds']:.2f} | {r['rss_peak'] / 1e9:.2f} | {above:.2f} |"
        print(f"{row} {above / size_gb:.1f} |")
    print(f"time ratio learn / fine-tune: {ln['seconds'] / ft['seconds']:.2f} (goal <= 1.3)")
    extra = (ln["rss_peak"] - ln["rss_start"] - ft["rss_peak"] + ft["rss_start"]) / 1e9
    print(
        f"memory beyond the fine-tuning step (same batch, same activations): {extra:.2f} GB = "
        f"{extra / size_gb:.1f} model sizes; goal (K + 3) = {experts + 3}"
    )


def search_path(experts: int, candidates: int) -> None:
    from jaxmerge.cli import quiet

    quiet.quiet_libraries("info")
    quiet.import_tensorflow()
    import jax
    import numpy as np

    from jaxmerge.cli import gin_flags
    from jaxmerge.evaluation import Evaluator
    from jaxmerge.learning import coefficients as coef_lib
    from jaxmerge.learning import search
    from jaxmerge.learning.pool import Pool
    from jaxmerge.models import params, t5

    gin_flags.parse(["gin_configs/models/t5_tiny.gin"], ["DROPOUT_RATE = 0.0"])
    config = gin_flags.macro("MODEL")
    init = jax.jit(lambda key: params.unbox(t5.init_params(config, key)))
    trees = [params.flatten(init(jax.random.key(i))) for i in range(experts)]  # K random models
    pool = Pool([f"e{i}" for i in range(experts)], None, trees, None, list(trees[0]))
    spec = coef_lib.CoefficientSpec(space="simplex")
    grouping = coef_lib.groups(spec, pool.names)
    task = ["jaxmerge_coreference_pronoun", "jaxmerge_word_sense_topic"]  # scores vary with r
    evaluator = Evaluator(config, task, batch_size=32, max_examples=64)
    fitness = search.merge_fitness(spec, grouping, pool, evaluator)
    spent = {"merging": 0.0, "evaluating": 0.0}
    original_merged = fitness.merged

    def timed_merged(x):
        start = time.perf_counter()
        tree = jax.block_until_ready(original_merged(x))
        spent["merging"] += time.perf_counter() - start
        return tree

    fitness.merged = timed_merged
    original_evaluate = evaluator.evaluate

    def timed_evaluate(tree, **kw):
        start = time.perf_counter()
        out = original_evaluate(tree, **kw)
        spent["evaluating"] += time.perf_counter() - start
        return out

    evaluator.evaluate = timed_evaluate
    popsize = 10
    x0 = coef_lib.initial_raw(spec, 1, experts).ravel()
    start = time.perf_counter()
    found = search.search(fitness, x0, popsize=popsize, generations=candidates // popsize)
    wall = time.perf_counter() - start
    optimizer = wall - spent["merging"] - spent["evaluating"]
    n = found["history"][-1]["evaluations"]
    print(f"search path, tiny, K={experts}, {n} candidates, 2 tasks x 64 rows each:")
    print("| total s | merging s | evaluating s | optimizer and rest s |")
    print("|---|---|---|---|")
    print(f"| {wall:.1f} | {spent['merging']:.1f} | {spent['evaluating']:.1f} | {optimizer:.1f} |")
    print(f"best fitness {found['best_fitness']:.3f}; weights {np.round(found['best_x'], 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.size, args.experts, args.batch)))
        return
    gradient_path(args.size, args.experts, args.batch)
    search_path(args.experts, args.candidates)


if __name__ == "__main__":
    main()
