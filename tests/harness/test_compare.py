"""The regression gate compares overhead ratios to native measured in the same result set."""

from __future__ import annotations

import itertools

import pytest

from harness.compare import compare_sets, format_table, load_results
from harness.result import ResultError, base_result, result_path, write_result
from tests.conftest import small_spec


def fake_result(adapter: str, step_us: float, repeat: int, *, jitter: float = 0.02, steps: int = 60):
    spec = small_spec(adapter=adapter, mode="aligned", steps=steps, repeat=repeat)
    result = base_result(spec, status="ok")
    pattern = itertools.cycle([1 - jitter, 1.0, 1 + jitter, 1 + jitter / 2])
    ends, now = [], 0
    for _ in range(steps):
        now += int(step_us * next(pattern) * 1000)
        ends.append(now)
    result["trajectory"] = {"step_end_ns": ends, "losses": [1.0] * steps}
    result["summary"] = {"warmup_steps": 5}
    return result


def result_set(native_us: float, lightning_us: float, repeats: int = 3):
    return [fake_result("native", native_us * (1 + 0.05 * r), r) for r in range(repeats)] + [
        fake_result("lightning", lightning_us * (1 + 0.05 * r), r) for r in range(repeats)
    ]


def test_machine_twice_as_slow_is_not_a_regression():
    baseline = result_set(100.0, 130.0)
    candidate = result_set(200.0, 260.0)  # everything slower: same overhead ratio
    comparison = compare_sets(baseline, candidate, threshold=0.10)
    assert comparison["regressions"] == []
    (row,) = comparison["cells"]
    assert abs(row["change"] - 1.0) < 0.02


def test_overhead_growth_beyond_threshold_is_a_regression():
    comparison = compare_sets(result_set(100.0, 130.0), result_set(100.0, 180.0), threshold=0.10)
    assert comparison["regressions"] == ["scaling lightning aligned fp32 b16"]
    assert "REGRESSED" in format_table(comparison)


def test_growth_within_threshold_passes():
    comparison = compare_sets(result_set(100.0, 130.0), result_set(100.0, 134.0), threshold=0.10)
    assert comparison["regressions"] == []


def test_cells_missing_a_side_are_listed_not_silently_dropped():
    baseline = result_set(100.0, 130.0)
    candidate = [r for r in result_set(100.0, 130.0) if r["spec"]["adapter"] == "native"]
    comparison = compare_sets(baseline, candidate)
    assert comparison["not_compared"] == ["scaling lightning aligned fp32 b16: only in baseline"]


def test_load_results_refuses_tampered_files(tmp_path):
    result = fake_result("native", 100.0, 0)
    write_result(result_path(tmp_path, small_spec(adapter="native", steps=60)), result)
    assert len(load_results(tmp_path)) == 1
    result["spec"]["lr"] = 0.5  # the spec no longer matches its id
    write_result(tmp_path / "tampered.json", result)
    with pytest.raises(ResultError, match="does not match its spec"):
        load_results(tmp_path)
