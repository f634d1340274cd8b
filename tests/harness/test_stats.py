"""Properties of the statistics: CIs contain their estimate, native vs itself contains 1."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from harness.stats import linear_fit, mann_whitney, median_ci, ratio_ci

times = st.floats(min_value=1.0, max_value=1e6, allow_nan=False)
groups = st.lists(st.lists(times, min_size=1, max_size=30), min_size=1, max_size=4)


@given(groups)
def test_median_ci_contains_the_median(data):
    estimate = median_ci(data, samples=200)
    assert estimate is not None
    assert estimate.low <= estimate.value <= estimate.high
    assert estimate.repeats == len(data)


@given(groups)
def test_ratio_of_a_run_to_itself_contains_one(data):
    estimate = ratio_ci(data, data, samples=200)
    assert estimate.value == 1.0
    assert estimate.contains(1.0)


def test_ratio_detects_a_real_slowdown():
    reference = [[100.0 + (i % 7) for i in range(200)] for _ in range(3)]
    slower = [[150.0 + (i % 7) for i in range(200)] for _ in range(3)]
    estimate = ratio_ci(slower, reference, samples=300)
    assert estimate.low > 1.4 and estimate.high < 1.6
    assert mann_whitney(slower[0], reference[0])["verdict"] == "slower"
    assert mann_whitney(reference[0], reference[1])["verdict"] == "no measurable difference"


def test_empty_and_non_finite_inputs_do_not_crash():
    assert median_ci([]) is None and median_ci([[float("nan")]]) is None
    assert ratio_ci([[1.0]], []) is None
    assert mann_whitney([1.0], [2.0])["verdict"] == "too few samples"


def test_linear_fit_recovers_fixed_and_slope():
    x = [1, 2, 4, 8, 16] * 3
    y = [50 + 3 * v for v in x]
    fit = linear_fit(x, y, samples=200)
    assert abs(fit["fixed"] - 50) < 1e-6 and abs(fit["slope"] - 3) < 1e-9
    assert fit["fixed_ci"][0] <= 50 <= fit["fixed_ci"][1]
