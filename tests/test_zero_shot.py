"""benchmarks/zero_shot.py: the standard error of a zero-shot margin and issue 13's verdict."""

import math

import pytest

from benchmarks import zero_shot


def test_margin_se_is_the_binomial_error_of_a_difference_of_means():
    n = {"a": 100, "b": 400}
    # one task: two independent proportions of 0.5 over 100 rows
    assert zero_shot.margin_se({"a": 50.0}, {"a": 50.0}, n) == pytest.approx(
        100 * math.sqrt(2 * 0.25 / 100)
    )
    # two tasks: the mean's variance is the sum over tasks over T²
    se = zero_shot.margin_se({"a": 50.0, "b": 90.0}, {"a": 50.0, "b": 100.0}, n)
    assert se == pytest.approx(100 * math.sqrt(2 * 0.25 / 100 + 0.09 / 400) / 2)


@pytest.mark.parametrize(
    "margins, se2, want",
    [
        ([11.6], 5.0, "spread unmeasured"),
        ([3.0], 5.0, "no"),  # inside sampling noise
        ([11.6, 9.0], 5.0, "yes"),
        ([11.6, 2.0], 1.0, "no"),  # the spread (9.6) exceeds the smaller margin
        ([6.0, 5.0], 5.5, "no"),  # inside 2 se
        ([4.0, -1.0], 1.0, "no"),
    ],
)
def test_verdict(margins, se2, want):
    assert zero_shot.verdict(margins, se2) == want
