"""Training speed on this machine: tokens/s and model FLOPs utilisation (MFU).

    .venv/bin/python -m benchmarks.train_speed --sizes tiny small --steps 10

For each size (gin_configs/models/t5_<size>.gin, the built-in 384-token byte
vocabulary) it jits one Adafactor train step on a full synthetic packed batch
(BATCH x {inputs: 256, targets: 64}, every position a real token), times `steps`
steps after a warm-up, and reports:
  tokens/s   (input + target tokens) per second
  model FLOPs per step, analytic (PaLM's MFU convention, Chowdhery et al. 2022,
             arXiv:2204.02311, for an encoder-decoder): 6 x (encoder matmul params x
             input tokens + decoder matmul params x target tokens) + 3 x the
             attention score/value matmuls; XLA's own count of the compiled step
             (which adds the optimizer and elementwise work) is shown beside it
  MFU        model FLOP/s / peak FLOP/s, where peak is measured here as the best
             float32 matmul throughput (2048x2048 @ 2048x2048), taken as the max of
             measurements before each size (the machine may be shared)
  10 min     tokens a 10-minute run processes at this speed; a model of N params
             wants about 20 N tokens (Hoffmann et al. 2022, arXiv:2203.15556)

With --mixtures it also trains on real packed batches of built-in mixtures, once
with the old fixed lengths (inputs 256, targets 64) and once with the lengths
fitted to the mixture (jaxmerge/tasks/lengths.py), alternating, and reports
examples/s (packed segments per second), the share of real tokens in the rows,
and the fitted / fixed speed-up, per size:

    .venv/bin/python -m benchmarks.train_speed --sizes nano tiny milli \
        --mixtures jaxmerge_held_in_extractive_qa jaxmerge_instructions
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmerge import training
from jaxmerge.cli import gin_flags
from jaxmerge.models import params, t5
from jaxmerge.tasks import lengths as lengths_lib

LENGTHS = {"inputs": 256, "targets": 64}


def peak_flops(n: int = 2048, reps: int = 20) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def model_flops(config: t5.T5Config, batch: int) -> float:
    """Analytic training FLOPs of one step (see the module docstring)."""
    e, hd, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
    n_mlp = len(config.mlp_activations) + 1
    enc_layer = 4 * e * hd + n_mlp * e * m
    dec_layer = 8 * e * hd + n_mlp * e * m
    enc = config.num_encoder_layers * enc_layer
    dec = config.num_decoder_layers * dec_layer + e * config.vocab_size
    t_in, t_out = LENGTHS["inputs"], LENGTHS["targets"]
    dense = 6 * (enc * t_in + dec * t_out)
    attn_fwd = (
        4
        * hd
        * (
            config.num_encoder_layers * t_in * t_in
            + config.num_decoder_layers * (t_out * t_out + t_out * t_in)
        )
    )
    return batch * (dense + 3 * attn_fwd)


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
    gin_flags.parse([f"gin_configs/models/t5_{size}.gin"], ["DROPOUT_RATE = 0.0"])
    config = gin_flags.macro("MODEL")
    tx = training.adafactor(training.constant(1e-3))
    p = params.unbox(t5.init_params(config, jax.random.key(0)))
    n_params = sum(x.size for x in jax.tree.leaves(p))
    state = tx.init(p)
    step_fn = training.make_train_step(config, tx)
    b = jax.device_put(synthetic_batch(batch, np.random.default_rng(0)))
    rng = jax.random.key(0)
    compiled = step_fn.lower(p, state, b, rng, 0).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops, flops = float(cost["flops"]), model_flops(config, batch)
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
        "XLA GFLOPs/step": xla_flops / 1e9,
        "GFLOP/s": flops / dt / 1e9,
        "MFU": flops / dt / peak,
        "10 min": tps * 600,
    }


FIXED = {"inputs": 256, "targets": 64}


def packed_batches(mixture: str, lengths: dict, batch: int, n: int) -> list[dict]:
    cfg = training.DatasetConfig(mixture, lengths, batch_size=batch, seed=0)
    it = training.make_dataset(cfg, seed=0)
    return [next(it) for _ in range(n)]


def bench_data(size: str, mixture: str, batch: int, steps: int, reps: int = 2) -> dict:
    """Examples/s on real packed batches: fixed 256/64 against fitted lengths."""
    gin_flags.parse([f"gin_configs/models/t5_{size}.gin"], ["DROPOUT_RATE = 0.0"])
    config = gin_flags.macro("MODEL")
    tx = training.adafactor(training.constant(1e-3))
    p0 = params.unbox(t5.init_params(config, jax.random.key(0)))
    step_fn = training.make_train_step(config, tx)
    runs = {"fixed": FIXED, "fitted": lengths_lib.fitted_feature_lengths(mixture)}
    data = {k: packed_batches(mixture, v, batch, steps) for k, v in runs.items()}
    best = {k: float("inf") for k in runs}
    fresh = lambda: jax.tree.map(jnp.copy, p0)  # the step donates its parameters
    for batches in data.values():  # compile and warm up
        p = fresh()
        state = tx.init(p)
        p, state, loss = step_fn(p, state, batches[0], jax.random.key(0), 0)
        loss.block_until_ready()
    for _ in range(reps):  # alternate, keep the best of each
        for k, batches in data.items():
            p = fresh()
            state = tx.init(p)
            t = time.perf_counter()
            for i, b in enumerate(batches):
                p, state, loss = step_fn(p, state, b, jax.random.key(0), i)
            loss.block_until_ready()
            best[k] = min(best[k], time.perf_counter() - t)
    out = {"size": size, "mixture": mixture}
    for k, batches in data.items():
        examples = sum(int(b["encoder_segment_ids"].max(axis=1).sum()) for b in batches)
        real = sum(int((b["encoder_input_tokens"] > 0).sum()) for b in batches)
        shape = sum(b["encoder_input_tokens"].size for b in batches)
        out[k] = {
            "lengths": runs[k],
            "examples/s": examples / best[k],
            "fill": real / shape,
            "s/step": best[k] / len(batches),
        }
    out["speed-up"] = out["fitted"]["examples/s"] / out["fixed"]["examples/s"]
    return out


def main_data(args) -> None:
    print(
        "| size | mixture | fixed 256/64: ex/s (inputs fill) | fitted: lengths, ex/s (fill) "
        "| speed-up |"
    )
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for mixture in args.mixtures:
            r = bench_data(size, mixture, args.batch, args.steps)
            f, g = r["fixed"], r["fitted"]
            lens = f"{g['lengths']['inputs']}/{g['lengths']['targets']}"
            print(
                f"| {size} | {mixture.removeprefix('jaxmerge_')} | {f['examples/s']:.0f} "
                f"({100 * f['fill']:.0f}%) | {lens}, {g['examples/s']:.0f} "
                f"({100 * g['fill']:.0f}%) | {r['speed-up']:.2f}x |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mixtures", nargs="*", default=[])
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    if args.mixtures:
        print(f"float32 matmul peak here: {peak_flops() / 1e9:.0f} GFLOP/s")
        main_data(args)
        return
    print(
        "| size | params | batch | s/step | tokens/s | model GFLOPs/step (XLA) | GFLOP/s "
        "| peak | MFU | tokens in 10 min |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    peak = 0.0
    for size in args.sizes:
        peak = max(peak, peak_flops())
        r = bench(size, args.batch, args.steps, peak)
        print(
            f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['s/step']:.3f} | "
            f"{r['tokens/s']:.0f} | {r['GFLOPs/step']:.2f} ({r['XLA GFLOPs/step']:.2f}) | "
            f"{r['GFLOP/s']:.1f} | {peak / 1e9:.0f} | {100 * r['MFU']:.1f}% | "
            f"{r['10 min'] / 1e6:.2f}M |",
            flush=True,
        )


if __name__ == "__main__":
    main()
