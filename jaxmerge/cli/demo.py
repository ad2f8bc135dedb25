"""`jaxmerge demo`: the study on its embedded default grid, or a quick synthetic merge.

    jaxmerge demo                 # what `make demo` runs
    jaxmerge demo --merge_only    # the quick one: synthetic checkpoints, every method

Without flags it runs `jaxmerge study --gin_file=gin_configs/study/demo.gin --output
demo_output`: experts fine-tuned live from the shipped small bases (assets/demo_bases/)
at two sizes, merged 2 and 4 at a time from both base kinds with average, task
arithmetic, TIES, DARE-TIES and learned coefficients, scored held-in and held-out, and
reported (the table on the console; demo_output/report.md and figures/). A second run
reuses every cached model and cell.

`--merge_only` writes Hugging Face safetensors directories under `--output`: a bf16
Llama-shaped base θ₀ and K experts

    θᵢ = θ₀ + s + pᵢ

that share one direction s (what every fine-tune learns) and each add a sparse
private skill pᵢ; where private skills overlap they conflict in sign at random.
The ideal merge keeps s once and every skill in full: τ* = s + Σᵢ pᵢ. Every
registered method merges the experts, and the table reports for the merged
task vector τ = θ − θ₀:

    skill kept   mean over i of ⟨τ − s, pᵢ⟩ / ⟨pᵢ, pᵢ⟩   (1 = each skill in full)
    shared kept  ⟨τ, s⟩ / ⟨s, s⟩                         (1 = s once; K = once per expert)
    error        ‖τ − τ*‖ / ‖τ*‖                          (0 = the ideal merge)

with the time each jitted in-memory merge took. Then the merge
engine (`jaxmerge merge`) merges the checkpoints on disk with TIES, as the
command line would, and writes `<output>/merged/`.
"""

import argparse
import pathlib
import time

import numpy as np

DEFAULT_OUTPUT = "demo_output"


STUDY_GIN = "gin_configs/study/demo.gin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="directory for everything")
    parser.add_argument(
        "--merge_only",
        action="store_true",
        help="the quick demo: merge synthetic checkpoints with every method (no training)",
    )
    parser.add_argument("--experts", type=int, default=3, help="number of experts (≥ 2)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers in the model")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size")
    parser.add_argument("--seed", type=int, default=0)


def llama_shapes(layers: int, hidden: int, vocab: int = 256) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a small Llama (Hugging Face naming)."""
    mlp = hidden * 8 // 3
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}.self_attn.{name}.weight"] = (hidden, hidden)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (mlp, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (mlp, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, mlp)
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def make_models(shapes, num_experts: int, seed: int):
    """(base, experts, shared, privates): θᵢ = θ₀ + s + pᵢ, each pᵢ nonzero on 30% of entries."""
    import ml_dtypes

    rng = np.random.default_rng(seed)
    base, shared, experts, privates = {}, {}, [], [{} for _ in range(num_experts)]
    for name, shape in shapes.items():
        theta0 = rng.standard_normal(shape).astype(np.float32) * 0.02
        base[name] = theta0.astype(ml_dtypes.bfloat16)
        shared[name] = rng.standard_normal(shape).astype(np.float32) * 0.002
        for private in privates:
            skill = rng.standard_normal(shape).astype(np.float32) * 0.004
            private[name] = skill * (rng.random(shape) < 0.3)
    for private in privates:
        experts.append(
            {
                name: (np.asarray(base[name], np.float32) + shared[name] + private[name]).astype(
                    ml_dtypes.bfloat16
                )
                for name in shapes
            }
        )
    return base, experts, shared, privates


def scores(merged, base, shared, privates) -> tuple[float, float, float]:
    """(skill kept, shared kept, error) of a merge; see the module docstring."""
    flat = lambda tree: np.concatenate([np.asarray(tree[n], np.float32).ravel() for n in base])
    tau = flat(merged) - flat(base)
    s = flat(shared)
    ps = [flat(p) for p in privates]
    skill = np.mean([np.dot(tau - s, p) / np.dot(p, p) for p in ps])
    ideal = s + sum(ps)
    error = np.linalg.norm(tau - ideal) / np.linalg.norm(ideal)
    return float(skill), float(np.dot(tau, s) / np.dot(s, s)), float(error)


def run(args: argparse.Namespace) -> int:
    if args.merge_only:
        return run_merge_only(args)
    from jaxmerge.cli import study

    study_args = argparse.Namespace(
        **{n: None for n in (*study.LIST_FLAGS, "categories", "max_examples")},
        gin_file=[STUDY_GIN],
        gin_bindings=[],
        output=args.output,
        report_only=False,
        verbosity=args.verbosity,
    )
    return study.run(study_args)


def run_merge_only(args: argparse.Namespace) -> int:
    import functools

    import jax
    from rich.console import Console
    from rich.table import Table

    from jaxmerge import checkpoints
    from jaxmerge.errors import InputError
    from jaxmerge.merging import MergeConfig, merge_checkpoints
    from jaxmerge.methods import METHODS, merge_trees

    if args.experts < 2:
        raise InputError(f"--experts={args.experts}: the demo needs at least 2 experts")
    console = Console()
    output = pathlib.Path(args.output)
    shapes = llama_shapes(args.layers, args.hidden)
    base, experts, shared, privates = make_models(shapes, args.experts, args.seed)
    params = {name: checkpoints.ParamInfo(v.shape, v.dtype) for name, v in base.items()}
    paths = []
    for label, model in [("base", base)] + [(f"expert_{i}", e) for i, e in enumerate(experts)]:
        writer = checkpoints.create(
            output / "inputs" / label, "safetensors", params, overwrite=True
        )
        for name, value in model.items():
            writer.write(name, value)
        paths.append(writer.finalize())
    count = sum(int(np.prod(s)) for s in shapes.values())
    console.print(
        f"[bold]jaxmerge demo[/bold]: {len(experts)} experts of a {args.layers}-layer "
        f"Llama-shaped model ({count:,} bf16 parameters) on {jax.device_count()} "
        f"{jax.default_backend()} device(s); inputs in {output / 'inputs'}/"
    )

    table = Table(title="What each merge keeps (ideal: skill 1, shared 1, error 0)")
    for column in ("method", "hyperparameters"):
        table.add_column(column)
    for column in ("skill kept", "shared kept", "error", "ms"):
        table.add_column(column, justify="right")
    for name, spec in METHODS.items():
        count = 2 if spec.max_experts == 2 else len(experts)
        merge = jax.jit(functools.partial(merge_trees, name, seed=args.seed))
        jax.block_until_ready(merge(experts[:count], base=base))  # compile
        start = time.perf_counter()
        merged = jax.block_until_ready(merge(experts[:count], base=base))
        elapsed = 1e3 * (time.perf_counter() - start)
        skill, shared_kept, error = scores(merged, base, shared, privates[:count])
        table.add_row(
            name + ("" if count == len(experts) else f" ({count} experts)"),
            _defaults(name),
            f"{skill:.2f}",
            f"{shared_kept:.2f}",
            f"{error:.2f}",
            f"{elapsed:.1f}",
        )
    console.print(table)

    config = MergeConfig(
        method="ties",
        base=str(paths[0]),
        experts=[str(p) for p in paths[1:]],
        output=str(output / "merged"),
        overwrite=True,
    )
    final = merge_checkpoints(config, quiet=True, log=console.print)
    with checkpoints.open(final) as reader:
        merged = {name: reader.read_numpy(name) for name in reader.params}
    skill, shared_kept, error = scores(merged, base, shared, privates)
    console.print(
        f"engine check: the checkpoint on disk scores skill {skill:.2f}, shared "
        f"{shared_kept:.2f}, error {error:.2f}, as TIES did in memory above.\n"
        f"Merge your own: jaxmerge merge --method ties --base {paths[0]} "
        f"--experts {' '.join(str(p) for p in paths[1:])} --output OUT"
    )
    return 0


def _defaults(name: str) -> str:
    from jaxmerge.methods import hparam_defaults

    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in hparam_defaults(name).items()
    )
