"""A task declares the (precision, device) combinations it cannot run: those runs end ``unsupported``
with the reason, before launching and in the worker, for every adapter; never ``failed``."""

from __future__ import annotations

import json

import pytest

from harness import registry
from harness.cli import main
from harness.plan import request_for, unsupported_reason
from harness.registry import get_adapter
from tasks.scaling import Scaling
from tests.conftest import small_spec

REASON = "planted: this model has no bf16 kernel on the CPU"


class NoCpuBf16(Scaling):
    name = "no-cpu-bf16"
    unsupported = {("bf16-mixed", "cpu"): REASON}


@pytest.fixture
def declaring_task(monkeypatch):
    entry = registry.Entry(kind="task", name=NoCpuBf16.name, target=f"{__name__}:NoCpuBf16", origin="built-in")
    monkeypatch.setitem(registry.task_table(), NoCpuBf16.name, entry)
    return NoCpuBf16.name


@pytest.mark.parametrize("adapter", ["native", "lightning", "hf", "keras", "fastai", "flash"])
def test_every_adapter_refuses_the_declared_combination_with_the_task_reason(declaring_task, adapter):
    spec = small_spec(task=declaring_task, adapter=adapter, precision="bf16-mixed")
    reason = get_adapter(adapter).check(request_for(spec))
    assert reason == f"task 'no-cpu-bf16' cannot run bf16-mixed on cpu: {REASON}"
    assert unsupported_reason(spec) == reason
    assert get_adapter(adapter).check(request_for(small_spec(task=declaring_task, adapter=adapter))) is None


def test_the_worker_reports_unsupported_without_training(declaring_task, inline):
    result = inline(small_spec(task=declaring_task, precision="bf16-mixed"))
    assert result["status"] == "unsupported"
    assert result["error"] == f"task 'no-cpu-bf16' cannot run bf16-mixed on cpu: {REASON}"
    assert result["trajectory"]["losses"] == [] and result["weights_digest"] is None
    assert inline(small_spec(task=declaring_task))["status"] == "ok"  # fp32 on the CPU is not declared


def test_cli_writes_an_unsupported_result_and_never_launches(declaring_task, capsys, tmp_path, monkeypatch):
    from harness import runner

    monkeypatch.setattr(runner, "run_spec", lambda *a, **k: pytest.fail("a declared-unsupported run was launched"))
    code = main(
        [
            "run",
            "--task",
            declaring_task,
            "--precision",
            "bf16-mixed",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--results-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "| unsupported | task 'no-cpu-bf16' cannot run bf16-mixed on cpu" in out
    (written,) = tmp_path.glob("*.json")
    result = json.loads(written.read_text())
    assert result["status"] == "unsupported" and REASON in result["error"]
