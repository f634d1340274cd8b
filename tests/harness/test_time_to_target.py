"""Time-to-target: periodic validation paused out of the clock, and never changing training."""

from __future__ import annotations

import pytest
import torch

from harness import probe as probe_module
from harness.cli import main
from harness.probe import Probe
from harness.spec import Spec
from harness.suites import load_suite_file
from harness.worker import run_inline, time_to_target


class FakeClock:
    """perf_counter_ns that advances only when told: step and eval durations are exact."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def test_evaluation_time_is_paused_out_of_every_later_step(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(probe_module.time, "perf_counter_ns", clock)
    calls = []

    def evaluate():
        clock.now += 5_000_000  # 5 ms of validation
        calls.append(clock.now)
        return {"eval_metric": 0.1 * len(calls)}

    probe = Probe(torch.device("cpu"))
    probe.evaluate_every(2, evaluate)
    probe.fit_start()
    for _ in range(5):
        clock.now += 100  # every step takes 100 ns
        probe.step_end(torch.tensor(1.0))
    trajectory = probe.resolve()
    assert trajectory.step_end_ns == [100, 200, 300, 400, 500]  # as if no validation had run
    assert [e["step"] for e in trajectory.evals] == [2, 4]
    assert [e["eval_s"] for e in trajectory.evals] == [0.005, 0.005]
    assert [e["eval_metric"] for e in trajectory.evals] == pytest.approx([0.1, 0.2])


def test_evaluate_every_refuses_nonpositive():
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        Probe(torch.device("cpu")).evaluate_every(0, dict)


def test_time_to_target_is_the_first_validation_that_meets_it():
    ends = [1_000_000_000 * (i + 1) for i in range(6)]  # step i ends at i+1 seconds
    evals = [{"step": 2, "eval_metric": 0.5}, {"step": 4, "eval_metric": 0.91}, {"step": 6, "eval_metric": 0.95}]
    assert time_to_target(evals, ends, 0.9, True) == {
        "target_metric": 0.9, "evals_run": 3, "steps_to_target": 4, "time_to_target_s": 4.0,
    }
    # Lower is better (e.g. perplexity): the first value at or below the target.
    assert time_to_target(evals, ends, 0.5, False)["steps_to_target"] == 2
    # Never reached: counted, with no time.
    assert time_to_target(evals, ends, 0.99, True) == {"target_metric": 0.99, "evals_run": 3}
    assert time_to_target(evals, ends, None, True) == {}
    assert time_to_target([], ends, 0.9, True) == {}


@pytest.mark.parametrize("task", ["digits", "tabular"])
def test_periodic_validation_leaves_training_bit_for_bit_unchanged(tmp_path, task):
    spec = Spec(task=task, adapter="native", device="cpu", batch_size=64, steps=30, lr=0.05)
    plain = run_inline(spec, tmp_path / "plain", save_weights=False)
    evaluated = run_inline(spec, tmp_path / "eval", save_weights=False, eval_every=10)
    assert plain["status"] == evaluated["status"] == "ok"
    assert evaluated["weights_digest"] == plain["weights_digest"]
    assert evaluated["trajectory"]["losses"] == plain["trajectory"]["losses"]
    evals = evaluated["trajectory"]["evals"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert all(0.0 <= e["eval_metric"] <= 1.0 and e["eval_s"] > 0 for e in evals)
    summary = evaluated["summary"]
    assert summary["eval_every"] == 10 and summary["evals_run"] == 3
    # The last validation is the same model as the final evaluation.
    assert evals[-1]["eval_metric"] == pytest.approx(summary["eval_metric"], abs=1e-6)
    assert "evals" not in plain["trajectory"] and "evals_run" not in plain["summary"]
    met = [e for e in evals if e["eval_metric"] >= summary["target_metric"]]
    if met:
        assert summary["steps_to_target"] == met[0]["step"]
        assert summary["time_to_target_s"] == evaluated["trajectory"]["step_end_ns"][met[0]["step"] - 1] / 1e9
    else:
        assert "time_to_target_s" not in summary


def test_tasks_without_a_target_do_not_evaluate(tmp_path):
    spec = Spec(task="scaling", adapter="native", device="cpu", batch_size=32, steps=6, lr=0.01, options={"width": 8})
    result = run_inline(spec, tmp_path, save_weights=False, eval_every=2)
    assert result["status"] == "ok" and "evals" not in result["trajectory"]
    assert "time_to_target_s" not in result["summary"]


def test_suite_file_eval_every(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('eval_every = 10\n[[runs]]\ntask = "digits"\nadapter = "native"\n')
    assert load_suite_file(path, "cpu").eval_every == 10
    path.write_text('eval_every = -1\n[[runs]]\ntask = "digits"\nadapter = "native"\n')
    with pytest.raises(ValueError, match="eval_every must be an integer from 0"):
        load_suite_file(path, "cpu")


def test_cli_refuses_a_negative_eval_every(tmp_path, capsys):
    code = main(["run", "--task", "digits", "--adapter", "native", "--eval-every", "-3",
                 "--results-dir", str(tmp_path / "r")])
    assert code == 2
    assert "--eval-every must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_eval_every_reaches_the_worker_process(tmp_path, capsys):
    """Through the CLI and the runner's fresh worker process, not only in-process."""
    from harness.result import read_result

    code = main(["run", "--task", "digits", "--adapter", "native", "--steps", "20", "--eval-every", "10",
                 "--results-dir", str(tmp_path), "--no-weights"])
    assert code == 0, capsys.readouterr().err
    (path,) = [p for p in tmp_path.glob("*.json")]
    result = read_result(path)
    assert [e["step"] for e in result["trajectory"]["evals"]] == [10, 20]
    assert result["summary"]["eval_every"] == 10


def test_a_failed_run_keeps_the_validations_it_made(tmp_path, plugin_env):
    """The partial trajectory of a failure carries its periodic validations too (FAILED runs show them)."""
    from tests.conftest import small_spec
    from tests.plugins.bakeoff_fault_adapters import FAULT_STEP

    spec = small_spec(adapter="fault-raise", task="digits", steps=6)  # digits declares a target: it validates
    result = run_inline(spec, tmp_path, save_weights=False, eval_every=1)
    assert result["status"] == "failed" and "planted failure" in result["error"], result["error"]
    assert len(result["trajectory"]["losses"]) == FAULT_STEP
    assert [e["step"] for e in result["trajectory"]["evals"]] == list(range(1, FAULT_STEP + 1))
