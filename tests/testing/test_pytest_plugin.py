"""bakeoff's pytest plugin and bakeoff.testing, used by a test project the way a user's CI uses them.

``user_project/`` is a user's repository: a package with two training loops and a test module
using the ``bakeoff`` fixture and the hypothesis strategies. pytester runs it in a fresh pytest
process (one run, ~15-40 s here), with the plugin loaded through its ``pytest11`` entry point where
bakeoff is installed (CI), or by ``-p bakeoff.pytest_plugin`` where the installed metadata predates it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

from harness.spec import SpecError

pytest_plugins = ("pytester",)

PROJECT = Path(__file__).parent / "user_project"


def plugin_args() -> list[str]:
    installed = {entry.name for entry in importlib.metadata.entry_points(group="pytest11")}
    return [] if "bakeoff.pytest_plugin" in installed else ["-p", "bakeoff.pytest_plugin"]


def test_a_user_project_checks_its_loops_and_a_failure_names_the_step_and_tensor(pytester):
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", "-q", timeout=900)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_user_parity.py::test_the_refactored_loop_still_reproduces_native*"])
    # The one failing assertion reads on its own: what ran, the claim, the first divergent step and tensor.
    result.stdout.fnmatch_lines(
        [
            "*ParityAssertionError: digits on userpkg.loops:drifting_train (aligned fp32, world size 1, batch 64 "
            "per rank, seed 0, 6 steps) against native",
            "*verdict diverged, declared bitwise (userpkg.loops:drifting_train's expected_parity)",
            "*first divergent step: 4 of 6 (loss * vs *",
            "*first divergent tensor (largest final difference): *.* (abs *, rel *)",  # e.g. features.0.bias
            "*run result: *.json",
        ]
    )


def test_assert_parity_raises_a_readable_error_in_process(tmp_path):
    from bakeoff.testing import ParityAssertionError, assert_parity

    with pytest.raises(ParityAssertionError) as caught:
        assert_parity("digits", "tests.adapters.test_loop:drifting_train", steps=6, results_dir=tmp_path)
    message = str(caught.value)
    assert "first divergent step: 4 of 6" in message and "first divergent tensor" in message
    assert caught.value.outcome.verdict.first_differing_step == 4
    outcome = assert_parity("digits", "tests.adapters.test_loop:fp32_only_train", steps=6, results_dir=tmp_path)
    assert outcome.partner_reused and outcome.verdict.verdict == "bitwise"


def test_strategies_draw_only_what_the_adapters_accept():
    from bakeoff.testing.strategies import combinations

    drawn = combinations(
        "digits",
        adapters=["native", "keras", "tests.adapters.test_loop:fp32_only_train"],
        precisions=["fp32", "bf16-mixed", "fp16-mixed"],
        grad_accum=[1, 2],
        world_sizes=[1, 2],
    )
    assert ("native", "aligned", "bf16-mixed", 2, 2) in drawn
    assert ("native", "aligned", "fp16-mixed", 1, 1) in drawn  # fp16 runs on CPU too (autocast + GradScaler)
    assert not any(a == "keras" and ws > 1 for a, _, _, _, ws in drawn)  # Keras fit() has no DDP on torch
    loop = [c for c in drawn if c[0].endswith("fp32_only_train")]
    assert loop == [
        ("tests.adapters.test_loop:fp32_only_train", "aligned", "fp32", 1, 1),
        ("tests.adapters.test_loop:fp32_only_train", "aligned", "fp32", 1, 2),
    ]


def test_assert_overhead_holds_a_planted_cost_to_its_budget(tmp_path, plugin_env):
    """A planted 2 ms busy-wait per step (main-thread CPU): a budget far above it passes, one below it fails
    with the measured figure and its CI; the thread clock, because the plant is CPU time by construction."""
    from bakeoff.testing import OverheadAssertionError, assert_overhead

    measure = {"task": "scaling", "adapter": "cost-busy2000", "clock": "thread", "rounds": 6, "steps": 30,
               "warmup": 10, "batch_size": 32, "options": {"width": 64}}
    record = assert_overhead(**measure, at_most_us=20_000, results_dir=tmp_path / "pass")
    difference = record["summary"]["thread"]["difference"]
    assert difference["low"] > 1_000 and difference["high"] < 20_000, difference  # the 2 ms plant is what it measured
    with pytest.raises(OverheadAssertionError) as caught:
        assert_overhead(**measure, at_most_us=500, results_dir=tmp_path / "fail")
    message = str(caught.value)
    assert message.startswith("cost-busy2000 on scaling (aligned fp32, batch 32): thread overhead +"), message
    assert "above the budget of 500 µs" in message and "over 6 paired rounds" in message
    assert caught.value.record["status"] == "ok"
    with pytest.raises(SpecError, match="give a budget"):
        assert_overhead("scaling", "cost-busy2000")
