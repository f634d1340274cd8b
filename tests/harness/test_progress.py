"""Bench progress: position, elapsed time and an estimate of the time left a user can plan with."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import progress
from harness.progress import SuiteProgress, duration, mlflow_ui_hint, summary_line
from tests.conftest import small_spec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (42, "42 s"), (59.6, "60 s"), (65, "1 min 05 s"), (3599, "59 min 59 s"), (3725, "1 h 02 min")],
)
def test_durations_read_as_a_person_would_say_them(seconds, text):
    assert duration(seconds) == text


def test_the_estimate_uses_same_adapter_runs_then_same_kind_then_all():
    native = [small_spec(seed=s) for s in range(3)]
    lightning = [small_spec(adapter="lightning", seed=s) for s in range(2)]
    ddp = small_spec(world_size=2, batch_size=8)
    clock = Clock()
    tracker = SuiteProgress([*native, *lightning, ddp], clock=clock)
    assert tracker.seconds_left() is None  # nothing measured yet: no estimate rather than a guess
    assert "after the first spec" in tracker.status()

    clock.now += 4
    tracker.record(native[0], skipped=False, seconds=4.0)
    # Every remaining spec is estimated from the only run so far.
    assert tracker.seconds_left() == pytest.approx(4.0 * 5)
    clock.now += 10
    tracker.record(lightning[0], skipped=False, seconds=10.0)
    # native: 4 s each (2 left), lightning: 10 s (1 left), the DDP spec: no torchrun run yet, mean of all = 7 s.
    assert tracker.seconds_left() == pytest.approx(2 * 4.0 + 10.0 + 7.0)
    assert tracker.status() == "14 s elapsed, about 25 s left"


def test_specs_with_a_result_already_cost_nothing_and_are_announced():
    specs = [small_spec(seed=s) for s in range(4)]
    tracker = SuiteProgress(specs, done_before=[specs[0].spec_id, specs[1].spec_id], clock=Clock())
    assert tracker.opening_line() == "resuming: 2 of 4 specs already have a result and are not run again"
    tracker.record(specs[0], skipped=True, seconds=0.01)
    assert tracker.seconds_left() is None  # a skipped spec says nothing about how long a run takes
    tracker.record(specs[2], skipped=False, seconds=6.0)
    assert tracker.seconds_left() == pytest.approx(6.0)  # specs[1] is done already, specs[3] runs
    assert SuiteProgress(specs, clock=Clock()).opening_line() is None


def test_a_progress_line_names_position_share_time_and_estimate():
    specs = [small_spec(seed=s) for s in range(4)]
    clock = Clock()
    tracker = SuiteProgress(specs, clock=clock)
    clock.now += 90
    line = tracker.line(1, 4, "scaling native aligned fp32 s0 | ok", specs[0], False, 90.0)
    assert line == (
        "[1/4, 25% done] scaling native aligned fp32 s0 | ok (90.0 s) · 1 min 30 s elapsed, about 4 min 30 s left"
    )
    clock.now += 1
    second = tracker.line(2, 4, "x", specs[1], True, 0.5)
    assert second == "[2/4, 50% done] x (done earlier) · 1 min 31 s elapsed, about 3 min 00 s left"


def test_the_closing_lines_say_what_ran_and_where_to_look():
    results = [{"status": "ok"}] * 3 + [{"status": "unsupported"}, {"status": "failed"}]
    line = summary_line("quick", results, 272, "workers forked from a zygote", Path("results/quick"))
    assert line == (
        "suite quick: 3 ok, 1 failed, 1 unsupported (5 specs) in 4 min 32 s, workers forked from a zygote; "
        "results in results/quick"
    )
    default = "sqlite:////repo/mlflow.db"
    view = "/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=bakeoff"
    assert mlflow_ui_hint(default, default_uri=default, experiment_id="3") == f"`make ui`, then http://127.0.0.1:5000{view}"
    # A server is the UI itself; credentials in its address are never printed.
    assert mlflow_ui_hint("http://user:token@host:5001/", default_uri=default, experiment_id="3") == (
        f"http://host:5001{view}"
    )
    other = mlflow_ui_hint("sqlite:////elsewhere/m.db", default_uri=default)
    assert other == "`.venv/bin/bakeoff ui --tracking-uri sqlite:////elsewhere/m.db`, then http://127.0.0.1:5000"
    assert progress.where_lines(Path("out/r/report.html"), "x") == ["  report:    out/r/report.html", "  MLflow UI: x"]
