"""torch.compile as a spec option: compile time off the step clock, reported on its own; declared verdicts.

The compiled runs use the smallest model (scaling, width 8) and the persistent inductor cache under
the checkout's ignored ``.cache/inductor``: the first compile on a fresh clone costs about a
minute on the 2-core machine, later ones load from the cache in seconds. One native compiled run
and one adapter's are in ``make test``; the other adapters' compiled runs are slow tests.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from adapters.base import verdict_meets
from harness.gpucheck import compare_across, extra_partners
from harness.parity import compare_files, partners, weights_from
from harness.plan import request_for
from harness.probe import Probe
from harness.registry import get_adapter
from harness.result import Result
from harness.spec import Spec


def against_eager(eager: dict, compiled: dict, folder):
    """The compiled run against native eager (the parity stage pairs it with native compiled only)."""
    return compare_across(Result.from_dict(eager), Result.from_dict(compiled), weights=weights_from([folder]))


def partner_ids(candidate: dict, pool: list[dict]) -> dict[str, str]:
    """role → reference spec id: the parity stage's partners and the GPU check's extra ones."""
    results = [Result.from_dict(r) for r in pool]
    mine = Result.from_dict(candidate)
    found = partners(mine, results) + extra_partners(mine, results)
    return {role: reference.spec_id for role, reference in found}


def tiny(adapter: str = "native", **fields) -> Spec:
    values = {"task": "scaling", "adapter": adapter, "batch_size": 16, "steps": 6, "lr": 0.05, "options": {"width": 8}}
    values.update(fields)
    return Spec(**values)


def test_a_compile_inside_a_step_is_paused_out_of_the_step_clock_and_reported():
    """A planted 'compile' (dynamo's own callback context around a sleep) inside step 2."""
    probe = Probe(torch.device("cpu"))
    assert probe.track_compiles()
    handler = torch._dynamo.callback_handler
    from torch._dynamo.callback import CallbackTrigger

    probe.fit_start()
    probe.add_loss(torch.tensor(1.0))
    probe.step_end()
    began = time.perf_counter_ns()
    with handler.install_callbacks(CallbackTrigger.DYNAMO, "planted"):
        time.sleep(0.3)
    probe.add_loss(torch.tensor(1.0))
    probe.step_end()
    raw_second_step = time.perf_counter_ns() - began
    probe.add_loss(torch.tensor(1.0))
    probe.step_end()
    probe.stop_tracking_compiles()
    trajectory = probe.resolve()
    (record,) = trajectory.compiles
    assert (
        record["step"] == 1
        and record["compile_s"] >= 0.3
        and record["paused_s"] == pytest.approx(record["compile_s"], abs=1e-3)
    )
    second = trajectory.step_end_ns[1] - trajectory.step_end_ns[0]
    assert second < raw_second_step - 0.29e9  # the planted 0.3 s is not in the step
    assert probe.compile_s == pytest.approx(record["compile_s"])
    # Detached: a compile after stop_tracking_compiles is not recorded.
    with handler.install_callbacks(CallbackTrigger.DYNAMO, "after"):
        pass
    assert len(probe.resolve().compiles) == 1


def test_native_compiled_reports_compile_time_and_is_close_to_eager(inline):
    eager = inline(tiny())
    compiled = inline(tiny(compile=True))
    assert compiled["status"] == "ok", compiled["error"]
    summary = compiled["summary"]
    assert summary["compile_tracked"] is True
    assert summary["compile_events"] >= 1 and summary["compile_s"] > 0
    assert summary["compile_s"] == pytest.approx(sum(c["compile_s"] for c in compiled["trajectory"]["compiles"]))
    assert summary["compile_setup_s"] > 0
    assert compiled["notes"]["compile_impl"] == "torch.compile(model)"
    assert compiled["notes"]["precision_observed"].startswith("not audited")
    assert eager["summary"].get("compile_events", 0) == 0 and "compile_setup_s" not in eager["summary"]
    verdict = against_eager(eager, compiled, inline.results_dir)
    declared = get_adapter("native").expected_parity_vs_eager(request_for(Spec.from_dict(compiled["spec"])))
    assert declared == "close" and verdict_meets(declared, verdict.verdict), verdict.describe()
    assert compiled["spec_id"] != eager["spec_id"] and "compiled" in Spec.from_dict(compiled["spec"]).label
    # The parity stage never pairs compiled with eager (plain compare refuses); the GPU check does.
    assert compare_files(eager, compiled, inline.results_dir).verdict == "not-comparable"
    assert partner_ids(compiled, [eager, compiled]) == {"eager": eager["spec_id"]}
    assert partner_ids(eager, [eager, compiled]) == {}


def check_adapter_compiled(inline, adapter_name: str, precision: str = "fp32") -> None:
    eager = inline(tiny(precision=precision))
    native = inline(tiny(precision=precision, compile=True))
    result = inline(tiny(adapter_name, precision=precision, compile=True))
    assert result["status"] == "ok", result["error"]
    assert result["summary"]["compile_events"] >= 1, result["summary"]  # it compiled, not reused native's code
    assert result["notes"]["compile_impl"]
    adapter = get_adapter(adapter_name)
    request = request_for(Spec.from_dict(result["spec"]))
    against_compiled = compare_files(native, result, inline.results_dir)
    assert against_compiled.verdict == adapter.expected_parity(request), against_compiled.describe()
    eager_verdict = against_eager(eager, result, inline.results_dir)
    assert verdict_meets(adapter.expected_parity_vs_eager(request), eager_verdict.verdict), eager_verdict.describe()
    pool = [eager, native, result]
    assert partner_ids(result, pool) == {"declared": native["spec_id"], "eager": eager["spec_id"]}


def test_lightning_compiled_matches_its_declaration(inline):
    check_adapter_compiled(inline, "lightning")


@pytest.mark.slow
@pytest.mark.parametrize("adapter_name", ["hf", "fastai", "keras"])
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_other_adapters_compiled_match_their_declarations(inline, adapter_name, precision):
    check_adapter_compiled(inline, adapter_name, precision)


def test_compile_declarations():
    request = request_for(tiny("lightning", compile=True))
    assert get_adapter("lightning").expected_parity(request) == "close"  # the loss is inside its graph
    assert get_adapter("fastai").expected_parity(replace(request)) == "bitwise"  # the task module alone
    assert get_adapter("hf").expected_parity(request) == "bitwise"
    assert get_adapter("keras").expected_parity(request) == "close"
    assert get_adapter("native").expected_parity(request) == "bitwise"
    for name in ("native", "lightning", "fastai", "hf", "keras"):
        assert get_adapter(name).expected_parity_vs_eager(request) == "close"
    assert verdict_meets("close", "bitwise") and not verdict_meets("bitwise", "close")
    assert not verdict_meets("close", "diverged")
