"""The study's report: the paper's aggregation of the results table, its five findings tested
on it, the paper's figures and one Markdown page.

Yadav et al. 2024, "What Matters for Model Merging at Scale?" (arXiv:2410.03617), §3. With
n(c, t) a row's `normalized` score (held-in: ÷ the category's expert, held-out: ÷ the base's
zero-shot score), a cell c = (size, base, k, seed, method) scores, for each kind,

    S_kind(c) = mean over the categories g of that kind ( mean over the tasks t of g  n(c, t) )

and a summary record (size, base, k, method) is the mean of S_kind over seeds (expert
subsets). Means skip NaN (undefined) entries and are NaN only when nothing is defined.
`findings` states each finding's measure; `build_report` is what `jaxmerge study
--report_only` calls: report.md and figures/ rebuilt from `results.csv` alone.
"""

import json
import math
import pathlib
import statistics
from collections.abc import Iterable, Mapping, Sequence

from jaxmerge.errors import InputError
from jaxmerge.evaluation import normalize
from jaxmerge.evaluation.normalize import HELD_IN, HELD_OUT
from jaxmerge.study.config import BASES, FIXED_METHODS, LEARNED
from jaxmerge.study.table import CSV_NAME, read_table, replace_atomically

MULTITASK = "multitask"
METHOD_ORDER = (*FIXED_METHODS, LEARNED, MULTITASK)
CELL = ("size", "parameters", "base", "num_experts", "seed", "method")
GROUP = ("size", "parameters", "base", "num_experts", "method")
TITLE = "What matters for model merging at scale? A small-scale replication"
LABELS = {
    HELD_IN: "normalized held-in (merged / expert)",
    HELD_OUT: "normalized held-out (merged / base zero-shot)",
}
BASE_NAMES = {"pretrained": "pretrained", "instruction_tuned": "instruction-tuned"}
FIGURES = {
    "held_in_vs_size.png": "normalized held-in vs model size",
    "held_out_vs_size.png": "normalized held-out vs model size",
    "held_in_vs_experts.png": "normalized held-in vs number of experts",
    "held_out_vs_experts.png": "normalized held-out vs number of experts",
}


def _mean(values: Iterable[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def _rank(value, order: Sequence) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _order(record: Mapping) -> tuple:
    """Sizes by parameters, pretrained before instruction-tuned, k, seed, methods as listed."""
    return (
        record["parameters"],
        record["size"],
        _rank(record["base"], BASES),
        record["num_experts"],
        record.get("seed", 0),
        _rank(record["method"], METHOD_ORDER),
    )


def cell_scores(rows: Iterable[Mapping]) -> list[dict]:
    """One record per cell (size, parameters, base, num_experts, seed, method) with
    held_in and held_out = S_kind(c): the mean over a category's tasks of `normalized`,
    then the mean over categories (NaN skipped; NaN if nothing is defined)."""
    cells: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    for i, row in enumerate(rows):
        if row["kind"] not in (HELD_IN, HELD_OUT):
            raise InputError(
                f"results table row {i}: column 'kind' is {row['kind']!r}, "
                f"expected {HELD_IN} or {HELD_OUT}"
            )
        kinds = cells.setdefault(tuple(row[c] for c in CELL), {HELD_IN: {}, HELD_OUT: {}})
        kinds[row["kind"]].setdefault(row["category"], []).append(float(row["normalized"]))
    records = []
    for key, kinds in cells.items():
        record = dict(zip(CELL, key, strict=True))
        for kind, categories in kinds.items():
            record[kind] = _mean([_mean(values) for values in categories.values()])
        records.append(record)
    return sorted(records, key=_order)


def summary(rows: Iterable[Mapping]) -> list[dict]:
    """One record per (size, parameters, base, num_experts, method): held_in and held_out
    = the mean over seeds of the cells' S_kind (normalize.mean_over_seeds), and `seeds`,
    the number of seeds (cells) averaged."""
    groups: dict[tuple, list[dict]] = {}
    for cell in cell_scores(rows):
        groups.setdefault(tuple(cell[c] for c in GROUP), []).append(cell)
    records = [
        {**dict(zip(GROUP, key, strict=True)), **normalize.mean_over_seeds(cells)}
        | {"seeds": len(cells)}
        for key, cells in groups.items()
    ]
    return sorted(records, key=_order)


class _Grid:
    """Look-ups over summary records: value(size, base, k, method, kind), NaN if absent."""

    def __init__(self, records: Sequence[Mapping]):
        self.records = sorted(records, key=_order)
        self.parameters = {r["size"]: r["parameters"] for r in self.records}
        self.sizes = list(dict.fromkeys(r["size"] for r in self.records))
        self.bases = sorted({r["base"] for r in self.records}, key=lambda b: _rank(b, BASES))
        self.ks = sorted({r["num_experts"] for r in self.records})
        methods = {r["method"] for r in self.records} - {MULTITASK}
        self.methods = sorted(methods, key=lambda m: _rank(m, METHOD_ORDER))
        self._values = {
            (r["size"], r["base"], r["num_experts"], r["method"]): r for r in self.records
        }

    def value(self, size, base, k, method, kind) -> float:
        record = self._values.get((size, base, k, method))
        return math.nan if record is None else float(record[kind])

    def fixed(self, size, base, k, kind) -> dict[str, float]:
        """The defined scores of the four fixed methods: method -> value."""
        values = {m: self.value(size, base, k, m, kind) for m in FIXED_METHODS}
        return {m: v for m, v in values.items() if not math.isnan(v)}

    def fixed_mean(self, size, base, k, kind) -> float:
        return _mean(self.fixed(size, base, k, kind).values())


def _f(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _verdict(outcomes: Sequence[bool]) -> bool | None:
    return None if not outcomes else all(outcomes)


def _strong_base(g: _Grid) -> tuple[bool | None, str]:
    if not {"pretrained", "instruction_tuned"} <= set(g.bases):
        return None, f"only the {', '.join(g.bases) or 'no'} base is in the grid"
    outcomes: dict[str, list[bool]] = {HELD_IN: [], HELD_OUT: [], LEARNED: []}
    details = []
    for size in g.sizes:
        for k in g.ks:
            for kind in (HELD_IN, HELD_OUT):
                it = g.fixed_mean(size, "instruction_tuned", k, kind)
                pt = g.fixed_mean(size, "pretrained", k, kind)
                if not (math.isnan(it) or math.isnan(pt)):
                    outcomes[kind].append(it > pt)
                    if kind == HELD_IN:
                        details.append(f"{size} k={k} {_f(it)} vs {_f(pt)}")
            it = g.value(size, "instruction_tuned", k, LEARNED, HELD_IN)
            pt = g.value(size, "pretrained", k, LEARNED, HELD_IN)
            if not (math.isnan(it) or math.isnan(pt)):
                outcomes[LEARNED].append(it > pt)
    held_in, held_out, learned = outcomes[HELD_IN], outcomes[HELD_OUT], outcomes[LEARNED]
    text = (
        f"instruction-tuned > pretrained held-in (mean of the four methods) at "
        f"{sum(held_in)} of {len(held_in)} (size, k): {'; '.join(details)}; "
        f"held-out at {sum(held_out)} of {len(held_out)}"
    )
    if learned:
        text += f"; learned held-in at {sum(learned)} of {len(learned)}"
    return _verdict(held_in), text


def _larger_merge_better(g: _Grid) -> tuple[bool | None, str]:
    if len(g.sizes) < 2:
        return None, f"one size only ({', '.join(g.sizes) or 'none'}): needs two or more"
    small, large = g.sizes[0], g.sizes[-1]
    outcomes, monotone = [], 0
    for base in g.bases:
        for k in g.ks:
            for method in FIXED_METHODS:
                series = [g.value(s, base, k, method, HELD_IN) for s in g.sizes]
                if math.isnan(series[0]) or math.isnan(series[-1]):
                    continue
                outcomes.append(series[-1] > series[0])
                defined = [v for v in series if not math.isnan(v)]
                monotone += all(a < b for a, b in zip(defined, defined[1:], strict=False))
    k = g.ks[-1]
    means = [
        f"{BASE_NAMES.get(b, b)} {_f(g.fixed_mean(small, b, k, HELD_IN))} → "
        f"{_f(g.fixed_mean(large, b, k, HELD_IN))}"
        for b in g.bases
    ]
    text = (
        f"held-in higher at {large} than at {small} for {sum(outcomes)} of {len(outcomes)} "
        f"(base, k, method), rising monotonically over all sizes for {monotone} of them; "
        f"mean of the four methods at k={k}, {small} → {large}: {', '.join(means)}"
    )
    learned = [
        f"{BASE_NAMES.get(b, b)} {_f(g.value(small, b, k, LEARNED, HELD_IN))} → "
        f"{_f(g.value(large, b, k, LEARNED, HELD_IN))}"
        for b in g.bases
        if LEARNED in g.methods
    ]
    if learned:
        text += f"; learned: {', '.join(learned)}"
    return _verdict(outcomes), text


def _generalization(g: _Grid) -> tuple[bool | None, str]:
    outcomes, lowest = [], math.inf
    for size in g.sizes:
        for base in g.bases:
            for k in g.ks:
                value = g.fixed_mean(size, base, k, HELD_OUT)
                if not math.isnan(value):
                    outcomes.append(value > 1)
                    lowest = min(lowest, value)
    if not outcomes:
        return None, "no held-out score of a merge is defined"
    text = (
        f"held-out (mean of the four methods) > 1 in {sum(outcomes)} of {len(outcomes)} "
        f"(size, base, k), lowest {_f(lowest)}"
    )
    large, k = g.sizes[-1], g.ks[-1]
    versus = []
    for base in g.bases:
        merges = g.fixed(large, base, k, HELD_OUT)
        if not merges:
            continue
        best = max(merges, key=merges.get)
        multitask = g.value(large, base, k, MULTITASK, HELD_OUT)
        part = f"{BASE_NAMES.get(base, base)}: best merge {best} {_f(merges[best])}"
        if math.isnan(multitask):
            part += " (no multitask score)"
        else:
            above = "above" if merges[best] > multitask else "not above"
            part += f" vs multitask {_f(multitask)} ({above})"
        learned = g.value(large, base, k, LEARNED, HELD_OUT)
        if not math.isnan(learned):
            part += f", learned {_f(learned)}"
        versus.append(part)
    if versus:
        text += f". At {large} with {k} experts: {'; '.join(versus)}"
    return _verdict(outcomes), text


def _absorb_experts(g: _Grid) -> tuple[bool | None, str]:
    if len(g.sizes) < 2 or len(g.ks) < 2:
        return None, (
            f"needs two or more sizes and numbers of experts (sizes: {', '.join(g.sizes)}; "
            f"k: {', '.join(map(str, g.ks))})"
        )
    k0, k1, small, large = g.ks[0], g.ks[-1], g.sizes[0], g.sizes[-1]
    outcomes, parts = [], []
    for base in g.bases:
        drops = {
            s: g.fixed_mean(s, base, k0, HELD_IN) - g.fixed_mean(s, base, k1, HELD_IN)
            for s in g.sizes
        }
        drops_text = ", ".join(f"{s} {_f(d)}" for s, d in drops.items())
        parts.append(f"{BASE_NAMES.get(base, base)} {drops_text}")
        if not (math.isnan(drops[small]) or math.isnan(drops[large])):
            outcomes.append(drops[large] < drops[small])
    text = (
        f"drop in held-in from {k0} to {k1} experts (mean of the four methods): "
        f"{'; '.join(parts)}; smaller at {large} than at {small} for "
        f"{sum(outcomes)} of {len(outcomes)} bases"
    )
    return _verdict(outcomes), text


def _methods_converge(g: _Grid) -> tuple[bool | None, str]:
    if len(g.sizes) < 2:
        return None, f"one size only ({', '.join(g.sizes) or 'none'}): needs two or more"
    small, large = g.sizes[0], g.sizes[-1]

    def spread(size, base, k) -> float:
        values = g.fixed(size, base, k, HELD_IN).values()
        return max(values) - min(values) if len(values) >= 2 else math.nan

    outcomes, parts = [], []
    for base in g.bases:
        for k in g.ks:
            a, b = spread(small, base, k), spread(large, base, k)
            if not (math.isnan(a) or math.isnan(b)):
                outcomes.append(b < a)
                parts.append(f"{BASE_NAMES.get(base, base)} k={k} {_f(a)} → {_f(b)}")
    text = (
        f"held-in spread (max − min over the four methods), {small} → {large}: "
        f"{'; '.join(parts) or 'none defined'}; smaller at {large} for "
        f"{sum(outcomes)} of {len(outcomes)} (base, k)"
    )
    return _verdict(outcomes), text


_FINDINGS = (
    (
        "A strong base merges better",
        "held-in (and held-out) of merges from the instruction-tuned base > from the pretrained "
        "base, mean of the four methods, at every (size, k) with both bases",
        _strong_base,
        "PaLM-2 1B, 2 → 8 experts: held-in 0.91 → 0.86 from the instruction-tuned base vs "
        "0.66 → 0.39 from the pretrained base",
    ),
    (
        "Larger models merge more easily",
        "held-in at the largest size > at the smallest, for every (base, k, method) of the "
        "four methods",
        _larger_merge_better,
        "PaLM-2, instruction-tuned base, 8 experts: held-in ≈0.86 at 1B, 0.93 at 64B for "
        "all four methods",
    ),
    (
        "Merging improves generalization",
        "held-out (mean of the four methods) > 1 (the base's zero-shot) in every (size, base, "
        "k); and, at the largest size and k, the best merge's held-out vs the multitask model's",
        _generalization,
        "PaLM-2 64B, instruction-tuned base, 8 experts: held-out ≈1.09–1.10 for the four "
        "methods vs multitask 1.05 (merging beats multitask on held-out only at 64B)",
    ),
    (
        "Larger models absorb more experts",
        "drop = held-in(smallest k) − held-in(largest k), mean of the four methods, is smaller "
        "at the largest size than at the smallest, for every base",
        _absorb_experts,
        "PaLM-2 1B, 2 → 8 experts: held-in 0.91 → 0.86 (instruction-tuned), 0.66 → 0.39 "
        "(pretrained); at 64B the instruction-tuned base keeps 0.93 with 8 experts",
    ),
    (
        "Methods converge at scale",
        "spread = max − min held-in over the four methods is smaller at the largest size than "
        "at the smallest, for every (base, k)",
        _methods_converge,
        "PaLM-2 64B, instruction-tuned base, 8 experts: held-in 0.93 for all four methods",
    ),
)


def findings(summary_records: Sequence[Mapping]) -> list[dict]:
    """The paper's five findings, tested on `summary` records (only the four fixed methods
    where a finding speaks of merging methods; "learned" appears in the evidence).

    With H_in, H_out the summary scores and M(size, base, k) the mean over the fixed methods:
      1. strong base: M_in(s, IT, k) > M_in(s, PT, k) at every (s, k) with both bases
         (held-out reported alongside); None with one base.
      2. larger merge more easily: H_in(largest size) > H_in(smallest) for every
         (base, k, method); None with one size.
      3. generalization: M_out(s, b, k) > 1 for every (s, b, k); the best fixed merge vs the
         multitask model at the largest size and k is reported, not tested.
      4. absorb more experts: drop(s, b) = M_in(s, b, k_min) − M_in(s, b, k_max) is smaller
         at the largest size than at the smallest, for every base; None with one k or size.
      5. methods converge: max − min of H_in over the fixed methods is smaller at the largest
         size than at the smallest, for every (base, k); None with one size.

    Each: {"number", "title", "measure", "holds" (True / False / None: the grid cannot test
    it), "evidence" (the numbers), "paper" (the paper's own numbers)}.
    """
    grid = _Grid(summary_records)
    out = []
    for number, (title, measure, test, paper) in enumerate(_FINDINGS, start=1):
        holds, evidence = test(grid) if grid.records else (None, "the table is empty")
        out.append(
            {
                "number": number,
                "title": title,
                "measure": measure,
                "holds": holds,
                "evidence": evidence,
                "paper": paper,
            }
        )
    return out


def _points(xs: Sequence, ys: Sequence[float]) -> tuple[list, list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _panels(plt, grid: _Grid, kind: str, suptitle: str):
    """One panel per base (pretrained left, instruction-tuned right), shared y."""
    n = len(grid.bases)
    fig, axes = plt.subplots(
        1, n, sharey=True, squeeze=False, figsize=(max(4.2 * n, 6.4), 4.4), layout="constrained"
    )
    for ax, base in zip(axes[0], grid.bases, strict=True):
        ax.set_title(f"{BASE_NAMES.get(base, base)} base")
        ax.grid(alpha=0.3)
        if kind == HELD_OUT:
            ax.axhline(1.0, color="grey", linestyle=":", label="base zero-shot")
    axes[0][0].set_ylabel(LABELS[kind])
    fig.suptitle(suptitle)
    return fig, list(zip(axes[0], grid.bases, strict=True))


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        handles.values(),
        handles.keys(),
        loc="outside lower center",
        ncol=min(len(handles), 4),
        fontsize="small",
    )
    fig.savefig(path, dpi=120)
    return path


def _versus_size(plt, grid: _Grid, kind: str, path: pathlib.Path) -> pathlib.Path:
    k = grid.ks[-1]
    x = [grid.parameters[s] for s in grid.sizes]
    fig, panels = _panels(plt, grid, kind, f"{LABELS[kind]} vs model size, {k} experts")
    try:
        for ax, base in panels:
            for i, method in enumerate(grid.methods):
                ys = [grid.value(s, base, k, method, kind) for s in grid.sizes]
                ax.plot(*_points(x, ys), marker="o", color=f"C{i}", label=method)
            ys = [grid.value(s, base, k, MULTITASK, kind) for s in grid.sizes]
            ax.plot(*_points(x, ys), "k--", marker="s", label=MULTITASK)
            ax.set_xscale("log")
            ax.set_xticks(x, labels=grid.sizes)
            ax.minorticks_off()
            ax.margins(x=0.15)
            ax.set_xlabel("parameters (log scale)")
        return _save(fig, path)
    finally:
        plt.close(fig)


def _versus_experts(plt, grid: _Grid, kind: str, path: pathlib.Path) -> pathlib.Path:
    title = f"{LABELS[kind]} vs number of experts\n(merges: mean of the four methods)"
    fig, panels = _panels(plt, grid, kind, title)
    try:
        for ax, base in panels:
            for i, size in enumerate(grid.sizes):
                ys = [grid.fixed_mean(size, base, k, kind) for k in grid.ks]
                ax.plot(*_points(grid.ks, ys), marker="o", color=f"C{i}", label=f"{size} merges")
                ys = [grid.value(size, base, k, MULTITASK, kind) for k in grid.ks]
                ax.plot(
                    *_points(grid.ks, ys),
                    linestyle="--",
                    marker="s",
                    color=f"C{i}",
                    label=f"{size} multitask",
                )
            ax.set_xticks(grid.ks)
            ax.margins(x=0.15)
            ax.set_xlabel("number of experts k")
        return _save(fig, path)
    finally:
        plt.close(fig)


def figures(summary_records: Sequence[Mapping], directory) -> list[pathlib.Path]:
    """The paper's plots as PNGs in `directory`: held_{in,out}_vs_size.png (x: parameters,
    log scale; one line per method and the multitask model dashed black, at the largest k)
    and held_{in,out}_vs_experts.png (x: k; one line per size, the mean of the four fixed
    methods, and its multitask model dashed in the same colour); one panel per base.
    Returns the paths written (none for an empty summary)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = _Grid(summary_records)
    if not grid.records:
        return []
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [_versus_size(plt, grid, kind, directory / f"{kind}_vs_size.png") for kind in LABELS]
    paths += [
        _versus_experts(plt, grid, kind, directory / f"{kind}_vs_experts.png") for kind in LABELS
    ]
    return paths


GRID_SEARCHED = ("task_arithmetic", "ties")


def learned_versus_fixed(summary_records: Sequence[Mapping]) -> list[dict]:
    """Issue 14's bar, per (size, base, k) with learned coefficients in the grid: does
    `learned` beat the best grid-searched task arithmetic or TIES on held-in, without a
    lower held-out than that method's? One record per comparison: size, base, num_experts,
    best (the method), learned_held_in, best_held_in, learned_held_out, best_held_out,
    beats (held-in higher), held_out_kept (held-out not lower). Seed-averaged scores."""
    g = _Grid(summary_records)
    records = []
    for size in g.sizes:
        for base in g.bases:
            for k in g.ks:
                learned_in = g.value(size, base, k, LEARNED, HELD_IN)
                fixed = {m: g.value(size, base, k, m, HELD_IN) for m in GRID_SEARCHED}
                fixed = {m: v for m, v in fixed.items() if not math.isnan(v)}
                if math.isnan(learned_in) or not fixed:
                    continue
                best = max(fixed, key=fixed.get)
                learned_out = g.value(size, base, k, LEARNED, HELD_OUT)
                best_out = g.value(size, base, k, best, HELD_OUT)
                records.append(
                    {
                        "size": size,
                        "base": base,
                        "num_experts": k,
                        "best": best,
                        "learned_held_in": learned_in,
                        "best_held_in": fixed[best],
                        "learned_held_out": learned_out,
                        "best_held_out": best_out,
                        "beats": learned_in > fixed[best],
                        "held_out_kept": learned_out >= best_out,
                    }
                )
    return records


def learned_difference(records: Sequence[Mapping]) -> list[dict]:
    """Issue 14's bar over cells, where one cell cannot tell: per size, then over all
    sizes ("all"), the mean over (base, k) of learned minus the best fixed recipe,

        Δ_kind = mean_c (learned_kind(c) - best_kind(c)),  se = stdev_c(...) / √n,

    for held-in and held-out (`learned_versus_fixed`'s records). At 32 rows a task one
    cell's normalized held-out moves by 0.05-0.1 from sampling alone, so two equal methods
    would keep held-out in about half the cells; the mean over cells is the measure. The
    cells share experts (k of the same pool), so the se is, if anything, too small. `met`:
    Δ_held_in above twice its se and Δ_held_out not below zero; None with one cell."""
    groups: dict[str, list[Mapping]] = {}
    for r in records:
        groups.setdefault(r["size"], []).append(r)
    if len(groups) > 1:
        groups["all"] = list(records)
    out = []
    for size, rs in groups.items():
        row: dict = {"size": size, "cells": len(rs)}
        for kind in (HELD_IN, HELD_OUT):
            d = [r[f"learned_{kind}"] - r[f"best_{kind}"] for r in rs]
            se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
            row[f"{kind}_difference"], row[f"{kind}_se"] = statistics.fmean(d), se
        held_in, se_in = row[f"{HELD_IN}_difference"], row[f"{HELD_IN}_se"]
        row["met"] = (
            None
            if math.isnan(se_in)
            else held_in > 2 * se_in and row[f"{HELD_OUT}_difference"] >= 0
        )
        out.append(row)
    return out


def _learned_section(summary_records: Sequence[Mapping]) -> list[str]:
    records = learned_versus_fixed(summary_records)
    if not records:
        return []
    beats = sum(r["beats"] for r in records)
    both = sum(r["beats"] and r["held_out_kept"] for r in records)
    differences = learned_difference(records)
    lines = [
        "## Learned coefficients against the best grid-searched recipe",
        "",
        f"Learned (CMA-ES on validation) beats the better of task arithmetic and TIES on "
        f"held-in in {beats} of {len(records)} (size, base, k), and does so without a lower "
        f"held-out in {both} of {len(records)}.",
        "",
        "| size | base | experts k | best fixed | held-in learned | held-in best | "
        "held-out learned | held-out best |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['size']} | {BASE_NAMES.get(r['base'], r['base'])} | {r['num_experts']} | "
        f"{r['best']} | {_f(r['learned_held_in'])} | {_f(r['best_held_in'])} | "
        f"{_f(r['learned_held_out'])} | {_f(r['best_held_out'])} |"
        for r in records
    ]
    lines += [
        "",
        "One cell's normalized held-out moves by 0.05-0.1 from sampling alone (at 32 rows a "
        "task), so the bar is read over cells: learned minus the best fixed recipe, mean "
        "over (base, k) ± its standard error; met when the held-in difference is above "
        "twice its standard error and the held-out difference is not below zero.",
        "",
        "| size | cells | held-in difference | held-out difference | met |",
        "|---|---:|---:|---:|---|",
    ]
    verdicts = {True: "yes", False: "no", None: "-"}
    lines += [
        f"| {d['size']} | {d['cells']} | {_signed(d, HELD_IN)} | {_signed(d, HELD_OUT)} | "
        f"{verdicts[d['met']]} |"
        for d in differences
    ]
    return [*lines, ""]


def _signed(difference: Mapping, kind: str) -> str:
    mean, se = difference[f"{kind}_difference"], difference[f"{kind}_se"]
    return f"{mean:+.3f}" + ("" if math.isnan(se) else f" ± {se:.3f}")


def _value(value) -> str:
    if isinstance(value, float):
        return _f(value)
    return "n/a" if value is None else str(value)


def _quality(quality: Mapping) -> list[str]:
    """A table per size of what the models reached before merging; missing keys skipped."""
    lines = [
        "## Quality of the ingredients",
        "",
        "Validation accuracy in percent, before any merge (issue 13's bars).",
        "",
    ]
    for size, q in quality.items():
        if not isinstance(q, Mapping):
            continue
        rows = []
        if "experts_met" in q or "experts_total" in q:
            met, total = q.get("experts_met", "?"), q.get("experts_total", "?")
            rows.append(("experts that met their bar", f"{met} of {total}"))
        for base, value in (q.get("base_held_out") or {}).items():
            rows.append((f"{BASE_NAMES.get(base, base)} base, zero-shot held-out", _pct(value)))
        if "held_out_majority" in q:
            rows.append(("held-out, majority-class baseline", _pct(q["held_out_majority"])))
        for base, scores in (q.get("multitask") or {}).items():
            for kind, value in (scores or {}).items():
                name = kind.replace("_", "-")
                rows.append((f"multitask ({BASE_NAMES.get(base, base)}), {name}", _pct(value)))
        known = {"experts_met", "experts_total", "base_held_out", "held_out_majority", "multitask"}
        known |= {"experts"}
        rows += [(key, _value(value)) for key, value in q.items() if key not in known]
        lines += [f"### {size}", "", "| measure | value |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        lines.append("")
        experts = [e for e in q.get("experts") or [] if isinstance(e, Mapping)]
        if experts:  # validation accuracy (percent) on the expert's own category
            lines += [
                "| expert | own category | majority answer | bar (halfway to 100) | met |",
                "|---|---:|---:|---:|---|",
            ]
            lines += [
                f"| {e.get('model', '?')} | {_pct(e.get('accuracy'))} | "
                f"{_pct(e.get('majority'))} | {_pct(e.get('halfway'))} | "
                f"{'yes' if e.get('met') else 'no'} |"
                for e in experts
            ]
            lines.append("")
    return lines


def _pct(value) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "n/a"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    text = f"{seconds:.0f} s"
    if seconds >= 3600:
        text += f" ({seconds / 3600:.1f} h)"
    elif seconds >= 60:
        text += f" ({seconds / 60:.1f} min)"
    return text


def markdown(
    summary_records: Sequence[Mapping],
    findings: Sequence[Mapping],
    *,
    title: str,
    command: str | None,
    seconds: float | None,
    quality: Mapping | None = None,
    figure_paths: Sequence = (),
) -> str:
    """The report as Markdown: the command and its duration, the quality of the ingredients
    (if given), the summary table (3 decimals), the findings and the figures, linked by
    `figure_paths` relative to the report's directory (e.g. figures/held_in_vs_size.png)."""
    lines = [f"# {title}", ""]
    lines.append(f"- Command: `{command}`" if command else "- Command: not recorded")
    lines += [f"- Time: {_duration(seconds)}", ""]
    lines += [
        "Normalized scores as Yadav et al. 2024 (arXiv:2410.03617) define them: held-in = "
        "merged / the category's expert, held-out = merged / the base's zero-shot score; the "
        "mean over a category's tasks, then over categories, then over seeds (expert subsets).",
        "",
    ]
    if quality:  # sizes smallest first, as in the tables (study.json sorts its keys)
        sizes = _Grid(summary_records).sizes
        lines += _quality(dict(sorted(quality.items(), key=lambda kv: _rank(kv[0], sizes))))
    lines += ["## Results", ""]
    lines += ["| size | parameters | base | experts k | method | held-in | held-out | seeds |"]
    lines += ["|---|---:|---|---:|---|---:|---:|---:|"]
    for r in sorted(summary_records, key=_order):
        lines.append(
            f"| {r['size']} | {r['parameters']:,} | {BASE_NAMES.get(r['base'], r['base'])} | "
            f"{r['num_experts']} | {r['method']} | {_f(r[HELD_IN])} | {_f(r[HELD_OUT])} | "
            f"{r['seeds']} |"
        )
    lines += ["", *_learned_section(summary_records), "## Findings", ""]
    verdicts = {True: "holds", False: "does not hold", None: "not testable here"}
    for f in findings:
        lines.append(
            f"- **{f['number']}. {f['title']}: {verdicts[f['holds']]}.** {f['evidence']}. "
            f"Measure: {f['measure']}. Paper: {f['paper']}."
        )
    lines += ["", "## Figures", ""]
    for path in figure_paths:
        path = pathlib.PurePath(path)
        lines += [f"![{FIGURES.get(path.name, path.stem)}]({path.as_posix()})", ""]
    if not figure_paths:
        lines += ["No figures (the table is empty).", ""]
    return "\n".join(lines)


def _study_json(directory: pathlib.Path) -> dict:
    path = directory / "study.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def build_report(
    directory,
    *,
    title: str = TITLE,
    command: str | None = None,
    seconds: float | None = None,
    quality: Mapping | None = None,
) -> pathlib.Path:
    """Rebuilds `directory/report.md` and `directory/figures/*.png` from
    `directory/results.csv` alone; command, seconds and quality default to the keys of
    `directory/study.json` when it exists. Returns the report's path."""
    directory = pathlib.Path(directory)
    records = summary(read_table(directory / CSV_NAME))
    if command is None or seconds is None or quality is None:
        meta = _study_json(directory)
        command = meta.get("command") if command is None else command
        seconds = meta.get("seconds") if seconds is None else seconds
        quality = meta.get("quality") if quality is None else quality
    paths = figures(records, directory / "figures")
    text = markdown(
        records,
        findings(records),
        title=title,
        command=command,
        seconds=seconds,
        quality=quality,
        figure_paths=[p.relative_to(directory) for p in paths],
    )
    report = directory / "report.md"
    replace_atomically(report, lambda tmp: tmp.write_text(text))
    return report
