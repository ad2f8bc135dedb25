"""Training speed on this machine: tokens/s and model FLOPs utilisation (MFU).

    .venv/bin/python benchmarks/train_speed.py --sizes tiny small --steps 10

For each size (gin_configs/models/t5_<size>.gin, the built-in 384-token byte
vocabulary) it jits one Adafactor train step on a full synthetic packed batch
(BATCH x {inputs: 256, targets: 64}, every position a real token), times `steps`
steps after a warm-up, and reports:
  tokens/s   (input + target tokens) per second
  FLOPs/step XLA's cost analysis of the compiled step (forward + backward + update)
  MFU        achieved FLOP/s / peak FLOP/s, where peak is measured here as the best
             float32 matmul throughput (a 2048x2048 @ 2048x2048 product)
  10-min N   the parameter count a 10-minute run could train to 20 tokens/parameter
             (Hoffmann et al. 2022, arXiv:2203.15556) at this size's tokens/s — a
             rough guide, since tokens/s falls as N grows.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge import gin_utils, train
from jaxmerge.models import params, t5

LENGTHS = {"inputs": 256, "targets": 64}


def peak_flops(n: int = 2048, reps: int = 10) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def synthetic_batch(batch: int, rng: np.random.Generator) -> dict:
    enc = rng.integers(3, 259, (batch, LENGTHS["inputs"]), dtype=np.int32)
    tgt = rng.integers(3, 259, (batch, LENGTHS["targets"]), dtype=np.int32)
    ones = lambda x: np.ones_like(x)
    return {
        "encoder_input_tokens": enc,
        "encoder_segment_ids": ones(enc),
        "decoder_target_tokens": tgt,
        "decoder_input_tokens": np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
        "decoder_segment_ids": ones(tgt),
        "decoder_loss_weights": ones(tgt),
    }


def bench(size: str, batch: int, steps: int, peak: float) -> dict:
    gin_utils.parse([f"gin_configs/models/t5_{size}.gin"], ["DROPOUT_RATE = 0.0"])
    config = gin_utils.macro("MODEL")
    tx = train.adafactor(train.constant(1e-3))
    p = params.unbox(t5.init_params(config, jax.random.key(0)))
    n_params = sum(x.size for x in jax.tree.leaves(p))
    state = tx.init(p)
    step_fn = train.make_train_step(config, tx)
    b = jax.device_put(synthetic_batch(batch, np.random.default_rng(0)))
    rng = jax.random.key(0)
    compiled = step_fn.lower(p, state, b, rng, 0).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost["flops"])
    p, state, loss = step_fn(p, state, b, rng, 0)  # warm-up
    loss.block_until_ready()
    t = time.perf_counter()
    for i in range(steps):
        p, state, loss = step_fn(p, state, b, rng, i + 1)
    loss.block_until_ready()
    dt = (time.perf_counter() - t) / steps
    tokens = batch * (LENGTHS["inputs"] + LENGTHS["targets"])
    tps = tokens / dt
    return {
        "size": size,
        "params": n_params,
        "batch": batch,
        "s/step": dt,
        "tokens/s": tps,
        "GFLOPs/step": flops / 1e9,
        "GFLOP/s": flops / dt / 1e9,
        "MFU": flops / dt / peak,
        "10-min N": tps * 600 / 20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    peak = peak_flops()
    print(f"devices: {jax.devices()}; measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    print("| size | params | batch | s/step | tokens/s | GFLOPs/step | GFLOP/s | MFU | 10-min N |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = bench(size, args.batch, args.steps, peak)
        print(
            f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['s/step']:.3f} | "
            f"{r['tokens/s']:.0f} | {r['GFLOPs/step']:.2f} | {r['GFLOP/s']:.1f} | "
            f"{100 * r['MFU']:.1f}% | {r['10-min N'] / 1e6:.2f}M |",
            flush=True,
        )


if __name__ == "__main__":
    main()
