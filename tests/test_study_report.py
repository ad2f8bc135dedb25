"""The study's report on synthetic results tables whose answers are known by construction."""

import itertools
import json
import math

import pyarrow.parquet as pq
import pytest

from jaxmerge.errors import InputError
from jaxmerge.study import report
from jaxmerge.study.table import COLUMNS, read_table, write_table

SIZES = {"nano": 74240, "micro": 150000}
BASES = ("pretrained", "instruction_tuned")
METHODS = ("average", "task_arithmetic", "ties", "dare_ties", "learned", "multitask")
# (task, kind, category, offset from the cell's target; None: a reference of 0)
TASKS = (
    ("sent_a", "held_in", "sentiment", 0.02),
    ("sent_b", "held_in", "sentiment", -0.02),
    ("topic_a", "held_in", "topic", 0.02),
    ("topic_b", "held_in", "topic", -0.02),
    ("nli_a", "held_out", "nli", 0.0),
    ("nli_zero", "held_out", "nli", None),
    ("coref_a", "held_out", "coreference", 0.0),
)
PNG = b"\x89PNG\r\n\x1a\n"


def _target(sign: int, s: int, base: str, k: int, method: str) -> tuple[float, float]:
    """(held-in, held-out) of a cell: with sign +1 all five findings hold, with -1 none.

    Held-in rises with size (0.15 s) and the instruction-tuned base (+0.2), drops with k
    by 0.2 (smallest size) and 0.1 (largest), and the methods spread by 0.04 / 0.01 per
    step; sign -1 flips each effect. Held-out is 1 ± (0.05 + 0.05 s)."""
    if method == "multitask":
        return 0.95, 1.02
    it = base == "instruction_tuned"
    spread = ((0.04, 0.01) if sign > 0 else (0.01, 0.04))[s]
    drop = ((0.2, 0.1) if sign > 0 else (0.1, 0.2))[s] * (k - 2) / 2
    offset = METHODS.index(method) - 1.5
    held_in = 0.5 + sign * (0.15 * s + 0.2 * it) - drop + offset * spread
    return held_in, 1 + sign * (0.05 + 0.05 * s)


def make_table(sign=1, sizes=SIZES, bases=BASES, ks=(2, 4)) -> list[dict]:
    rows = []
    cells = itertools.product(enumerate(sizes.items()), bases, ks, (0, 1), METHODS)
    for (s, (size, parameters)), base, k, seed, method in cells:
        targets = dict(zip(("held_in", "held_out"), _target(sign, s, base, k, method), strict=True))
        for task, kind, category, offset in TASKS:
            if offset is None:
                accuracy, reference = 10.0, 0.0
            else:
                accuracy, reference = 50 * (targets[kind] + offset + (seed - 0.5) * 0.02), 50.0
            fixed = method != "multitask"
            rows.append(
                dict(size=size, parameters=parameters, base=base, num_experts=k, seed=seed)
                | dict(experts="sentiment+topic", method=method, task=task, kind=kind)
                | dict(hyperparameters='{"lam": 0.5}' if fixed else "{}", category=category)
                | dict(validation_held_in=0.9 if fixed else math.nan, accuracy=accuracy)
                | dict(
                    reference=reference, normalized=accuracy / reference if reference else math.nan
                )
            )
    return rows


def _same(a, b) -> bool:
    return type(a) is type(b) and (
        a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    )


def test_table_round_trip(tmp_path):
    rows = make_table()
    csv_path, parquet_path = write_table(rows, tmp_path)
    got = read_table(csv_path)
    assert len(got) == len(rows)
    assert all(_same(r[c], g[c]) for r, g in zip(rows, got, strict=True) for c in COLUMNS)
    assert any(math.isnan(g["normalized"]) for g in got)
    parquet = pq.read_table(parquet_path)
    assert parquet.column_names == list(COLUMNS) and parquet.num_rows == len(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.parquet"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (",category,", ",group,", "results.csv: missing column 'category'"),
        (",held_out,", ",held_sideways,", "results.csv: line .*column 'kind'"),
        (",74240,", ",many,", "results.csv: line .*column 'parameters'"),
    ],
)
def test_malformed_table_names_file_and_column(tmp_path, old, new, message):
    csv_path, _ = write_table(make_table(sizes={"nano": 74240}), tmp_path)
    csv_path.write_text(csv_path.read_text().replace(old, new, 1))
    with pytest.raises(InputError, match=message):
        read_table(csv_path)


def test_missing_table_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="results.csv: no such file"):
        report.build_report(tmp_path)


def test_cell_scores_by_hand():
    cell = dict(size="nano", parameters=1, base="pretrained", num_experts=2, seed=0, method="ties")
    entries = [  # (kind, category, normalized)
        ("held_in", "sentiment", 0.5), ("held_in", "sentiment", math.nan),
        ("held_in", "topic", 1.0), ("held_in", "topic", 0.8),
        ("held_out", "nli", 1.2), ("held_out", "coreference", math.nan),
    ]  # fmt: skip
    rows = [cell | dict(kind=k, category=c, normalized=n) for k, c, n in entries]
    (got,) = report.cell_scores(rows)
    # sentiment 0.5 (NaN skipped), topic 0.9 -> 0.7; held-out: nli 1.2, coreference undefined
    assert got["held_in"] == pytest.approx(0.7) and got["held_out"] == pytest.approx(1.2)
    (empty,) = report.cell_scores(
        [cell | dict(kind="held_out", category="nli", normalized=math.nan)]
    )
    assert math.isnan(empty["held_in"]) and math.isnan(empty["held_out"])


def test_summary_means_over_seeds():
    records = report.summary(make_table())
    assert len(records) == 2 * 2 * 2 * 6 and all(r["seeds"] == 2 for r in records)
    first = records[0]
    assert (first["size"], first["base"], first["num_experts"], first["method"]) == (
        "nano", "pretrained", 2, "average"
    )  # fmt: skip
    assert first["held_in"] == pytest.approx(0.5 - 1.5 * 0.04)
    assert first["held_out"] == pytest.approx(1.05)


@pytest.mark.parametrize("sign", [1, -1])
def test_findings_hold_or_fail_by_construction(sign):
    found = report.findings(report.summary(make_table(sign)))
    assert [f["number"] for f in found] == [1, 2, 3, 4, 5]
    assert [f["holds"] for f in found] == [sign > 0] * 5
    assert all(f["evidence"] and f["paper"] for f in found)
    assert "learned" in found[1]["evidence"] and "multitask" in found[2]["evidence"]


def test_findings_the_grid_cannot_test():
    found = report.findings(report.summary(make_table(sizes={"nano": 74240})))
    assert [f["holds"] for f in found] == [True, None, True, None, None]
    one_base = report.findings(report.summary(make_table(bases=("pretrained",))))
    assert one_base[0]["holds"] is None
    one_k = report.findings(report.summary(make_table(ks=(4,))))
    assert one_k[3]["holds"] is None and one_k[4]["holds"] is True
    assert all(f["holds"] is None for f in report.findings([]))


def test_learned_versus_the_best_grid_searched_recipe():
    rows = make_table()
    compared = report.learned_versus_fixed(report.summary(rows))
    assert len(compared) == 2 * 2 * 2  # (size, base, k)
    assert all(r["best"] == "ties" and r["beats"] and r["held_out_kept"] for r in compared)
    for row in rows:  # learned: held-in below TIES, held-out above, in one (size, base, k)
        if (row["size"], row["base"], row["num_experts"], row["method"]) == (
            "micro", "pretrained", 4, "learned"
        ):  # fmt: skip
            row["normalized"] += -0.3 if row["kind"] == "held_in" else 0.1
    changed = report.learned_versus_fixed(report.summary(rows))
    lost = [r for r in changed if not r["beats"]]
    assert [(r["size"], r["base"], r["num_experts"]) for r in lost] == [("micro", "pretrained", 4)]
    assert lost[0]["learned_held_in"] < lost[0]["best_held_in"] and lost[0]["held_out_kept"]
    text = report.markdown(report.summary(rows), [], title="t", command=None, seconds=None)
    assert "on held-in in 7 of 8 (size, base, k)" in text
    without = [r for r in rows if r["method"] != "learned"]
    assert report.learned_versus_fixed(report.summary(without)) == []
    assert "| all | 8 |" in text and "held-out difference" in text
    assert "Learned coefficients" not in report.markdown(
        report.summary(without), [], title="t", command=None, seconds=None
    )


@pytest.mark.parametrize("grid", [{}, {"sizes": {"nano": 74240}, "ks": (8,)}])
def test_figures_are_pngs(tmp_path, grid):
    paths = report.figures(report.summary(make_table(**grid)), tmp_path / "figures")
    assert [p.name for p in paths] == list(report.FIGURES)
    assert all(p.read_bytes().startswith(PNG) for p in paths)


def test_build_report_is_deterministic_and_complete(tmp_path):
    write_table(make_table(), tmp_path)
    quality = {
        "nano": {
            "experts_met": 3,
            "experts_total": 4,
            "base_held_out": {"pretrained": 50.0},
            "experts": [
                {
                    "model": "expert/pretrained/topic",
                    "accuracy": 94.2,
                    "majority": 25.7,
                    "halfway": 62.8,
                    "met": True,
                }
            ],
        },
        "micro": {"multitask": {"instruction_tuned": {"held_in": 90.0, "held_out": 61.25}}},
    }
    quality = dict(sorted(quality.items()))  # as study.json keeps them: micro before nano
    meta = {"command": "jaxmerge study --gin_file=tiny.gin", "seconds": 4000, "quality": quality}
    (tmp_path / "study.json").write_text(json.dumps(meta))
    path = report.build_report(tmp_path)
    text = path.read_text()
    assert path == tmp_path / "report.md"
    for expected in [
        "`jaxmerge study --gin_file=tiny.gin`",
        "4000 s (1.1 h)",
        "| experts that met their bar | 3 of 4 |",
        "| expert/pretrained/topic | 94.2 | 25.7 | 62.8 | yes |",
        "| multitask (instruction-tuned), held-out | 61.2 |",
        "| nano | 74,240 | pretrained | 2 | average | 0.440 | 1.050 | 2 |",
        "**1. A strong base merges better: holds.**",
        "**5. Methods converge at scale: holds.**",
        "Paper: PaLM-2 64B",
        "![normalized held-in vs model size](figures/held_in_vs_size.png)",
        "(figures/held_out_vs_experts.png)",
    ]:
        assert expected in text
    assert text.index("### nano") < text.index("### micro")  # smallest first
    report.build_report(tmp_path)
    assert path.read_text() == text


def test_learned_difference_is_the_mean_over_cells_with_its_standard_error():
    def cell(size, d_in, d_out):
        return {"size": size, "learned_held_in": 0.5 + d_in, "best_held_in": 0.5,
                "learned_held_out": 1.0 + d_out, "best_held_out": 1.0}  # fmt: skip

    records = [cell("nano", 0.1, 0.0), cell("nano", 0.2, 0.2), cell("micro", 0.02, -0.1)]
    records += [cell("micro", -0.02, 0.05)]
    by_size = {d["size"]: d for d in report.learned_difference(records)}
    assert list(by_size) == ["nano", "micro", "all"]
    nano = by_size["nano"]
    assert nano["cells"] == 2 and nano["held_in_difference"] == pytest.approx(0.15)
    assert nano["held_in_se"] == pytest.approx(0.05)  # stdev 0.0707 / √2
    assert nano["held_out_difference"] == pytest.approx(0.1) and nano["met"] is True
    micro = by_size["micro"]  # held-in +0.00 ± 0.02: no evidence it beats
    assert micro["held_in_difference"] == pytest.approx(0.0) and micro["met"] is False
    assert by_size["all"]["cells"] == 4
    assert by_size["all"]["held_out_difference"] == pytest.approx(0.0375)
    lowered = [cell("tiny", 0.3, -0.01), cell("tiny", 0.31, -0.01)]  # held-in sure, out lower
    assert report.learned_difference(lowered)[0]["met"] is False
    one = report.learned_difference([cell("tiny", 0.3, 0.0)])
    assert one[0]["met"] is None and math.isnan(one[0]["held_in_se"])
