"""Is one ladder size's model set good enough to merge? Scores it and prints its table.

    .venv/bin/python -m benchmarks.model_set OUT --size nano

OUT is what `launch/local_experts.sh OUT SIZE` built. Every model is scored on the
validation split of every built-in held-in and held-out task (jaxmerge.model_set.score,
the Evaluator `jaxmerge eval` runs); prints Markdown tables for docs/ (models with their
training tokens and wall time; each expert on its own category beside the majority
baseline and the halfway bar; both bases zero-shot on held-out; the multitask
baselines) and writes OUT/quality.json (every row, and the summary).
"""

import argparse
import json
import pathlib

from jaxmerge.cli import quiet

quiet.quiet_libraries("info")
quiet.import_tensorflow()

from jaxmerge import model_set  # noqa: E402


def _time(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _tokens(tokens) -> str:
    return "-" if tokens is None else f"{tokens / 1e6:.2f}M"


def tables(rows: list[dict], summary: dict) -> str:
    lines = [
        "| model | steps | training tokens | wall time | own category (majority) "
        "| held-in mean | held-out mean |",
        "|---|---|---|---|---|---|---|",
    ]
    own = {e["model"]: e for e in summary["experts"]}
    seen = []
    for r in rows:
        if r["model"] in seen:
            continue
        seen.append(r["model"])
        e = own.get(r["model"])
        mine = f"{e['accuracy']:.0f} ({e['majority']:.0f})" if e else "-"
        lines.append(
            f"| {r['model']} | {r['step']} | {_tokens(r['tokens'])} | {_time(r['seconds'])} "
            f"| {mine} | {model_set.mean_accuracy(rows, r['model'], 'held_in'):.0f} "
            f"| {model_set.mean_accuracy(rows, r['model'], 'held_out'):.0f} |"
        )
    lines += [
        "",
        "| expert | dataset | accuracy | majority | halfway bar | met |",
        "|---|---|---|---|---|---|",
    ]
    for e in summary["experts"]:
        for d in e["datasets"]:
            lines.append(
                f"| {e['model']} | {d['task'].removeprefix('jaxmerge_')} | {d['accuracy']:.0f} "
                f"| {d['majority']:.0f} | {d['halfway']:.1f} | {'yes' if d['met'] else 'no'} |"
            )
    held_out = [r for r in rows if r["role"] == "base" and r["kind"] == "held_out"]
    lines += ["", "| base | held-out task | zero-shot accuracy | majority |", "|---|---|---|---|"]
    for r in held_out:
        lines.append(
            f"| {r['base']} | {r['task'].removeprefix('jaxmerge_')} | {r['accuracy']:.0f} "
            f"| {r['majority']:.0f} |"
        )
    b = summary["base_held_out"]
    lines += [
        "",
        f"Experts at least halfway on every dataset of their category: "
        f"{summary['experts_met']} / {summary['experts_total']}. Zero-shot held-out mean: "
        f"pre-trained {b['pretrained']:.1f}, instruction-tuned {b['instruction_tuned']:.1f} "
        f"(majority {summary['held_out_majority']:.1f}). Multitask held-in / held-out: "
        + ", ".join(
            f"from {k} {v['held_in']:.1f} / {v['held_out']:.1f}"
            for k, v in summary["multitask"].items()
        )
        + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the directory launch/local_experts.sh built")
    parser.add_argument("--size", default=None, help="only for the heading")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max_examples", type=int, default=None, help="rows per task")
    args = parser.parse_args()
    rows = model_set.score(args.out, split=args.split, max_examples=args.max_examples)
    summary = model_set.summary(rows)
    pathlib.Path(args.out, "quality.json").write_text(
        json.dumps({"size": args.size, "rows": rows, "summary": summary}, indent=1) + "\n"
    )
    print(f"\n## {args.size or args.out} ({args.split} split)\n")
    print(tables(rows, summary))


if __name__ == "__main__":
    main()
