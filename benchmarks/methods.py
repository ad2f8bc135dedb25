"""Speed of every merge method against the machine's memory-bandwidth floor.

    .venv/bin/python benchmarks/methods.py                 # 16 layers ≈ 0.97B parameters
    .venv/bin/python benchmarks/methods.py --layers 2 --methods ties task_arithmetic

Workload: the layer stack of a 1B-parameter Llama (Llama-3.2-1B shapes: hidden
2048, MLP 8192, 8 KV heads of 64, 16 layers; 0.97B parameters without the
embedding), bf16, a base and 2 experts. One layer's tensors are generated once
and every layer reuses them (one layer is 121 MB per model, far larger than any
cache, so every pass still streams from DRAM); this keeps a 3-model, 6 GB
workload inside a 2-core CI-sized machine's memory and set-up time.

Each method runs as the merge engine runs it: one jitted call per parameter
tensor (`merge_tensor` with hyperparameters bound, cast back to bf16), with
`trim="global"` TIES first computing each expert's exact whole-model threshold
by the two streaming histogram passes of `methods/select.py`.

Floor: the bytes a method must move — read the base and K experts, write the
result; 2 bytes each in bf16 — divided by the copy bandwidth measured in the
same run (the faster of numpy's single-threaded copy and XLA's, on 256 MiB).
`× floor` is time ÷ that; 1.0 would be a method as fast as a memcpy of its data.

What we learned about XLA on CPU (jax 0.10.2, 2 cores, 2026-11-23; full-stack run:
task_arithmetic 1.76 s = 6.2× floor, stacked 28.4 s, ties global 19.2 s = 10.9× TA):
- Unroll over experts. Task arithmetic over experts stacked on a leading axis,
  `b + (E − b[None]).sum(0)`, ran 16× slower than the same sum unrolled over a
  Python list of experts, which XLA fuses into one loop (and stacking costs a
  copy). Methods therefore take experts as a sequence.
- Elementwise fusions run near bandwidth on both cores. Scatters (histograms)
  and reductions with a compare inside (`sum(|τ| ≥ t)`) run on one core at
  2–8 ns per element, about four elementwise passes each; sort and top_k are far
  worse (~95 ns per element), and numpy's bincount on the same buffers was no
  faster. An exact global TIES threshold therefore costs at least one histogram
  pass per expert: the sampled bracket of `select.py` gets it down from two
  passes to one, and the rest of TIES (trim, elect, disjoint mean with the
  thresholds given) costs 1.3× task arithmetic. On accelerators scatters are
  cheap and this ratio falls.
- Random methods are bound by the PRNG: partitionable threefry (needed for the
  same bits on 1 or 8 devices) costs ~27 ns per value here, whatever bit width
  is drawn. DELLA also sorts every row twice (35 s for one 61M-parameter layer).
- Cast once: bf16 → f32 on load and f32 → bf16 at the end fuse into the same
  loop; casting intermediates separately costs a pass each.
- Compile once per shape: a Llama layer has 5 distinct shapes, so 16 layers cost
  5 compilations; the timed runs follow a one-layer warm-up.
- Timings on this shared 2-core VM move 2–3× with other load; compare rows of
  one run, not runs.
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])

from jaxmerge.methods import METHODS, parameter_key, select  # noqa: E402

HIDDEN, MLP, KV, LAYERS = 2048, 8192, 512, 16
LAYER_SHAPES = {
    "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "self_attn.k_proj.weight": (KV, HIDDEN),
    "self_attn.v_proj.weight": (KV, HIDDEN),
    "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "mlp.gate_proj.weight": (MLP, HIDDEN),
    "mlp.up_proj.weight": (MLP, HIDDEN),
    "mlp.down_proj.weight": (HIDDEN, MLP),
    "input_layernorm.weight": (HIDDEN,),
    "post_attention_layernorm.weight": (HIDDEN,),
}


def copy_bandwidth(megabytes: int = 256) -> float:
    """Bytes per second of a large copy (read + write), the better of numpy and XLA."""
    n = megabytes * 2**20 // 4
    source = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    target = np.empty_like(source)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(target, source)
        timings.append(time.perf_counter() - start)
    numpy_rate = 2 * source.nbytes / min(timings)
    x = jnp.asarray(source)
    copy = jax.jit(lambda v: v + 0.0)
    jax.block_until_ready(copy(x))
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(copy(x))
        timings.append(time.perf_counter() - start)
    xla_rate = 2 * source.nbytes / min(timings)
    return max(numpy_rate, xla_rate)


def make_layer(key, num_experts: int):
    """One layer's base and experts: θ₀ ~ N(0, 0.02²), θᵢ = θ₀ + N(0, 0.002²), in bf16."""
    base, experts = {}, [{} for _ in range(num_experts)]
    for j, (name, shape) in enumerate(LAYER_SHAPES.items()):
        k = jax.random.fold_in(key, j)
        theta0 = 0.02 * jax.random.normal(k, shape, jnp.float32)
        base[name] = theta0.astype(jnp.bfloat16)
        for i, expert in enumerate(experts):
            delta = 0.002 * jax.random.normal(jax.random.fold_in(k, i + 1), shape, jnp.float32)
            expert[name] = (theta0 + delta).astype(jnp.bfloat16)
    return jax.block_until_ready((base, experts))


def tensor_fn(method: str, hparams: dict):
    """jit(merge_tensor) with hyperparameters bound, cast back to the storage dtype."""
    spec = METHODS[method]

    def merge(experts, base, key, thresholds):
        kwargs = dict(hparams)
        if spec.needs_base:
            kwargs["base"] = base
        if spec.random:
            kwargs["key"] = key
        if thresholds is not None:
            kwargs["thresholds"] = thresholds
        return spec.merge_tensor(experts, **kwargs).astype(experts[0].dtype)

    return jax.jit(merge)


def global_thresholds(layer, experts, layers: int, density: float):
    """Each expert's exact whole-model TIES threshold, as `select.kth_largest_magnitude` finds it.

    A strided sample of every tensor brackets the threshold, one histogram pass
    over all tensors counts inside the bracket, and the two-pass radix runs only
    if the bracket missed (it is reported). Histograms add on the host in int64.
    """
    tau = lambda e, b: e.astype(jnp.float32) - b.astype(jnp.float32)
    sample_pass = jax.jit(lambda e, b: select.sample_bits(tau(e, b)))
    bracket_pass = jax.jit(lambda e, b, start: select.bracket_histogram(tau(e, b), start))
    n = layers * sum(int(np.prod(s)) for s in LAYER_SHAPES.values())
    k = select.count_for_fraction(density, n)
    thresholds = []
    for expert in experts:
        per_layer = jnp.concatenate(
            [sample_pass(expert[name], layer[name]) for name in LAYER_SHAPES]
        )
        sample = jnp.tile(per_layer, layers)  # every layer holds the same tensors
        start = select.bracket_from_sample(sample, k, n)
        histogram = np.zeros(select.BRACKET_BINS + select.ABOVE_BINS, np.int64)
        for _ in range(layers):
            for name in LAYER_SHAPES:
                histogram += np.asarray(bracket_pass(expert[name], layer[name], start))
        found, threshold = select.resolve_bracket(histogram, k, np.uint32(start))
        if not found:
            print("  (bracket missed; two-pass radix)")
            arrays = [tau(expert[name], layer[name]) for name in LAYER_SHAPES] * layers
            threshold = select.kth_largest_magnitude(arrays, k)
        thresholds.append(threshold)
    return jnp.asarray(np.asarray(thresholds, np.float32))


def run_method(method, hparams, base, experts, layers, stacked=False, repeats=2):
    """Best of `repeats` timed merges of the whole stack, after a one-layer warm-up."""
    if stacked:
        fn = jax.jit(
            lambda stack, b: (
                b.astype(jnp.float32)
                + (stack.astype(jnp.float32) - b.astype(jnp.float32)[None]).sum(0)
            ).astype(b.dtype)
        )
        stacks = {name: jnp.stack([e[name] for e in experts]) for name in LAYER_SHAPES}

        def once(layers=layers):
            out = None
            for _ in range(layers):
                for name in LAYER_SHAPES:
                    out = fn(stacks[name], base[name])
            return jax.block_until_ready(out)

    else:
        tensor_hparams = {k: v for k, v in hparams.items() if k != "trim"}
        fn = tensor_fn(method, tensor_hparams)
        use_global = METHODS[method].global_trim and hparams.get("trim", "global") == "global"
        keys = {name: parameter_key(0, name) for name in LAYER_SHAPES}

        def once(layers=layers):
            thresholds = None
            if use_global:
                thresholds = global_thresholds(
                    base, experts, layers, tensor_hparams.get("density", 0.2)
                )
            out = None
            for _ in range(layers):
                for name in LAYER_SHAPES:
                    out = fn([e[name] for e in experts], base[name], keys[name], thresholds)
            return jax.block_until_ready(out)

    once(layers=1)  # compiles every shape
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best is kept")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="names from METHODS, or task_arithmetic_stacked (default: all of them)",
    )
    args = parser.parse_args(argv)

    bandwidth = copy_bandwidth()
    base, experts = make_layer(jax.random.key(0), 2)
    parameters = args.layers * sum(int(np.prod(s)) for s in LAYER_SHAPES.values())
    print(
        f"{parameters / 1e9:.2f}B parameters (bf16, base + 2 experts), {args.layers} layers; "
        f"jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} device(s); "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    rows = []
    for name in args.methods or ["task_arithmetic_stacked", *METHODS]:
        if name == "task_arithmetic_stacked":
            rows.append(("task_arithmetic (stacked experts)", "task_arithmetic", {}, True))
        elif name == "ties":
            rows.append(("ties (trim=global)", "ties", {"trim": "global"}, False))
            rows.append(("ties (trim=tensor)", "ties", {"trim": "tensor"}, False))
        else:
            rows.append((name, name, {}, False))
    print(f"{'method':36s} {'seconds':>9s} {'GB/s':>7s} {'× floor':>8s}")
    results = {}
    for label, method, hparams, stacked in rows:
        spec = METHODS[method]
        inputs = len(experts) + (1 if spec.needs_base else 0)
        moved = parameters * 2 * (inputs + 1)  # bf16 reads + the write
        seconds = run_method(method, hparams, base, experts, args.layers, stacked, args.repeats)
        results[label] = seconds
        floor = moved / bandwidth
        print(f"{label:36s} {seconds:9.2f} {moved / seconds / 1e9:7.2f} {seconds / floor:8.2f}")
        sys.stdout.flush()
    if "task_arithmetic" in results and "ties (trim=global)" in results:
        ratio = results["ties (trim=global)"] / results["task_arithmetic"]
        print(f"ties (trim=global) / task_arithmetic: {ratio:.2f}")


if __name__ == "__main__":
    main()
