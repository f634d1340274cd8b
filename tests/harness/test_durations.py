"""Step durations from step ends, including a result that never took a step."""

from __future__ import annotations

from harness.durations import after_warmup, measured_steps_us, step_durations_ns


def test_durations_from_step_ends():
    assert step_durations_ns([5, 7, 12]) == [5, 2, 5]
    assert after_warmup([9, 1, 1, 1], 1) == [1, 1, 1]


def test_a_result_without_steps_has_no_durations():
    # unsupported results (and runs that failed before their first step) are ingested and reported too
    assert step_durations_ns([]) == [] and measured_steps_us([], 5) == []
