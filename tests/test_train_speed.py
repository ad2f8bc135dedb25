"""benchmarks/train_speed.py runs: one step of each kind, on nano, with tiny batches.

The numbers it reports are the benchmark's business; this checks that both of its
paths (the synthetic step and the fixed-against-fitted packed batches) run and report
consistent values, since the train step donates its parameters and a benchmark that
reuses them fails only when it is run.
"""

import pytest

from benchmarks import train_speed
from jaxmerge import tasks


def test_synthetic_step_reports_flops_and_mfu():
    r = train_speed.bench("nano", batch=8, steps=2, peak=1e12)
    assert r["params"] > 0 and r["s/step"] > 0
    assert r["tokens/s"] == pytest.approx(8 * (256 + 64) / r["s/step"])
    assert 0 < r["MFU"] < 1 and r["GFLOPs/step"] > 0


def test_fixed_against_fitted_lengths_on_real_batches():
    tasks.register()
    r = train_speed.bench_data("nano", "jaxmerge_held_in_topic", batch=8, steps=2, reps=1)
    fitted = r["fitted"]["lengths"]
    assert fitted["inputs"] < 256  # topic's inputs are under 100 bytes
    for k in ("fixed", "fitted"):
        assert 0 < r[k]["fill"] <= 1 and r[k]["examples/s"] > 0
    assert r["speed-up"] == pytest.approx(r["fitted"]["examples/s"] / r["fixed"]["examples/s"])


def test_peak_flops_is_a_positive_rate():
    assert train_speed.peak_flops(n=64, reps=2) > 0
