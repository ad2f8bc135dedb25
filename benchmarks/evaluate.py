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

Measured on the 2-core development VM (shared with other jobs; 1 CPU device):

| size | kind | rows | batch | build s | cold s | ex/s (model) | outside | new comp. | B/A | B1/B2 |
|---|---|---|---|---|---|---|---|---|---|---|
| tiny | predict | 64 | 32 | 3.7 | 5.0 | 69.6 (72.1) | 4% | 0 | 1.05 | 0.99 |
| tiny | score | 96 | 32 | 0.5 | 2.3 | 114.1 (115.4) | 1% | 0 | 1.06 | 0.98 |
| small | predict | 8 | 8 | 1.0 | 7.9 | 3.2 (3.2) | 1% | 0 | 0.99 | 1.02 |
| small | score | 16 | 8 | 0.6 | 4.6 | 8.8 (8.8) | 1% | 0 | 1.05 | 1.07 |

The whole run took 2.5 min. An earlier run under heavier load from other jobs (24 small
score rows; otherwise this code) gave B/A 0.95-1.12 and B1/B2 0.85-1.28, B1/B2 being
identical work: that spread is the shared VM's noise. New compilations were 0 and the
share outside the model at most 4% in every run.
"""

import argparse
import time

import jax
import numpy as np

from jaxmerge.cli import gin_flags
from jaxmerge.evaluation import Evaluator
from jaxmerge.models import params, t5

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
