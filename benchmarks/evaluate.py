"""Evaluation speed: examples/s of `jaxmerge.evaluation.Evaluator`, and what a new tree costs.

    .venv/bin/python -m benchmarks.evaluate --sizes tiny small

For each size (gin_configs/models/t5_<size>.gin, 384-token byte vocabulary, random-init
parameters) and each kind, an Evaluator is built once on one built-in task, inputs 256 /
targets 64 tokens:
  predict  jaxmerge_topic_news (held-in, exact match of greedy decoding; a random model
           rarely emits EOS, so nearly all 64 steps run)
  score    jaxmerge_nli_facts (held-out, rank classification; rows = question x choice)
Then tree A is evaluated cold (compiles) and twice warm, and a second tree B of the same
shapes, B = 0.9 A + 0.1 C (C another random init: a merge-like tree), twice. Reported:
  ex/s       examples (rows) per second of a warm call, end to end (model: model time only)
  outside    share of a warm call's wall time spent outside the model (seqio decoding,
             postprocessing, metrics, host transfers)
  new comp.  compilations caused by tree B (goal 0)
  B/A        tree B's first model time over tree A's best warm model time (goal <= 1.1;
             greedy decoding stops when every row has emitted EOS, so a tree whose
             outputs differ may decode for a different number of steps)
  B1/B2      tree B's first model time over its second: the cost of a new tree as such

Measured on the 2-core development VM (shared with other jobs; 1 CPU device), after
batches were cut to each task's longest example (evaluator.LENGTH_QUANTUM; the tasks'
inputs are far shorter than 256: topic_news at most 46 bytes, nli_facts 129 in its
earlier three-choice form, which these rows measured; it is two-choice and 93 now):

| size | kind | rows | batch | build s | cold s | ex/s (model) | outside | new comp. | B/A | B1/B2 |
|---|---|---|---|---|---|---|---|---|---|---|
| tiny | predict | 64 | 32 | 2.4 | 1.7 | 494.4 (573.7) | 14% | 0 | 0.89 | 1.00 |
| tiny | score | 96 | 32 | 0.6 | 1.2 | 467.6 (479.4) | 2% | 0 | 1.00 | 1.00 |
| small | predict | 8 | 8 | 0.8 | 4.9 | 11.2 (11.5) | 3% | 0 | 1.01 | 1.12 |
| small | score | 16 | 8 | 0.5 | 3.2 | 25.2 (25.8) | 2% | 0 | 1.09 | 1.02 |

and, in the run just before it, with every batch at the full 256 / 64 lengths:

| size | kind | rows | batch | build s | cold s | ex/s (model) | outside | new comp. | B/A | B1/B2 |
|---|---|---|---|---|---|---|---|---|---|---|
| tiny | predict | 64 | 32 | 2.3 | 1.8 | 115.9 (120.7) | 4% | 0 | 1.07 | 0.95 |
| tiny | score | 96 | 32 | 0.4 | 2.2 | 110.6 (111.4) | 1% | 0 | 0.96 | 0.97 |
| small | predict | 8 | 8 | 1.0 | 5.4 | 5.0 (5.1) | 2% | 0 | 1.05 | 0.94 |
| small | score | 16 | 8 | 0.8 | 5.7 | 7.6 (7.7) | 1% | 0 | 1.03 | 0.83 |

Fitting the lengths made evaluation 4.3x (tiny predict), 4.2x (tiny score), 2.2x and
3.3x (small) faster. The share outside the model rose with it for tiny predict (seqio's
decoding, postprocessing and exact match cost the same; the model got faster): 14%, under
the 15% goal. New compilations are 0 in every run; B/A and B1/B2 stay within the VM's
noise (an earlier, more loaded run gave B1/B2 of 0.85-1.28 for identical work).
"""

import argparse
import time

from jaxmerge.cli import quiet

quiet.quiet_libraries("info")  # only the table: no TensorFlow / absl start-up lines
quiet.import_tensorflow()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmerge.cli import gin_flags  # noqa: E402
from jaxmerge.evaluation import Evaluator  # noqa: E402
from jaxmerge.models import params, t5  # noqa: E402

TASKS = {"predict": "jaxmerge_topic_news", "score": "jaxmerge_nli_facts"}
ROWS = {"tiny": {"predict": 64, "score": 96}, "small": {"predict": 8, "score": 16}}
BATCH = {"tiny": 32, "small": 8}


def random_tree(config: t5.T5Config, seed: int) -> dict:
    init = jax.jit(lambda key: params.unbox(t5.init_params(config, key)))
    return jax.tree.map(np.asarray, init(jax.random.key(seed)))


def bench(size: str, kind: str, rows: int, batch: int) -> dict:
    gin_flags.parse([f"gin_configs/models/t5_{size}.gin"], ["DROPOUT_RATE = 0.0"])
    config = gin_flags.macro("MODEL")
    start = time.perf_counter()
    ev = Evaluator(config, TASKS[kind], batch_size=batch, max_examples=rows)
    build_s = time.perf_counter() - start
    a, c = random_tree(config, 0), random_tree(config, 1)
    b = jax.tree.map(lambda x, y: 0.9 * x + 0.1 * y, a, c)  # a merge-like second tree
    ev.evaluate(a)
    cold_s = ev.last_timing.total_s
    warm = []
    for _ in range(2):
        ev.evaluate(a)
        warm.append(ev.last_timing)
    best = min(warm, key=lambda t: t.total_s)
    compiled = ev.num_compilations
    ev.evaluate(b)
    b_first = ev.last_timing.model_s
    ev.evaluate(b)
    n = sum(ev.num_examples.values())
    return {
        "size": size,
        "kind": kind,
        "rows": n,
        "batch": batch,
        "build_s": build_s,
        "cold_s": cold_s,
        "ex/s": n / best.total_s,
        "model ex/s": n / best.model_s,
        "outside": best.outside_model_share,
        "new_compilations": ev.num_compilations - compiled,
        "b_over_a": b_first / min(t.model_s for t in warm),
        "b_first_over_warm": b_first / ev.last_timing.model_s,
        "data_builds": ev.num_data_builds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--rows", type=int, help="rows per task (default: per size)")
    parser.add_argument("--batch", type=int, help="batch size (default: per size)")
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    print(
        "| size | kind | rows | batch | build s | cold s | ex/s (model) | outside | new comp. "
        "| B/A | B1/B2 |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for size in args.sizes:
        for kind in TASKS:
            rows = args.rows or ROWS.get(size, ROWS["small"])[kind]
            r = bench(size, kind, rows, args.batch or BATCH.get(size, 8))
            assert r["data_builds"] == 1
            print(
                f"| {r['size']} | {r['kind']} | {r['rows']} | {r['batch']} | "
                f"{r['build_s']:.1f} | {r['cold_s']:.1f} | {r['ex/s']:.1f} "
                f"({r['model ex/s']:.1f}) | {100 * r['outside']:.0f}% | "
                f"{r['new_compilations']} | {r['b_over_a']:.2f} | {r['b_first_over_warm']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
