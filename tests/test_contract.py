"""One contract, every registered adapter (present and future).

For random small specs the parity verdict against native equals the verdict the adapter
declares for that configuration, a repeated run is bitwise identical, and the result has the
complete schema. Hypothesis shrinks a failing example and prints it as a spec (JSON) that
`bakeoff run` can reproduce.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from harness.parity import compare_files
from harness.plan import request_for
from harness.registry import RegistryError, adapter_names, get_adapter
from harness.result import validate_result
from harness.spec import Spec
from harness.worker import run_inline


def _isolated(name: str) -> bool:
    try:
        return get_adapter(name).environment is not None
    except RegistryError:
        return False


# Adapters in their own environment cannot run in this process; they go through the runner (a
# fresh worker with their interpreter, ~30-60 s a run plus a one-time environment build), which
# only the deep profile can afford: `make test-deep`.
OTHER_ADAPTERS = [
    pytest.param(name, marks=pytest.mark.slow) if _isolated(name) else name
    for name in adapter_names()
    if name != "native"
]

SUMMARY_KEYS = {
    "steps_completed",
    "median_step_us",
    "throughput_samples_per_s",
    "time_to_first_step_s",
    "fit_s",
    "startup_s",
    "final_loss",
    "eval_loss",
    "eval_metric",
    "peak_memory_bytes",
    "peak_memory_kind",
    "wall_s",
    "flops_per_step",
    "peak_flops_per_s",
    "achieved_flops_per_s",
    "mfu",
}
ENVIRONMENT_KEYS = {"python", "torch", "device_name", "cpu_model", "packages", "git_sha", "git_dirty", "env"}


@st.composite
def small_specs(draw, adapter: str) -> Spec:
    task = draw(st.sampled_from(["scaling", "digits"]))
    options = {"width": draw(st.sampled_from([8, 32]))} if task == "scaling" else {}
    # fp16 on CPU is drawn on the MLP only: this CPU has no fp16 arithmetic and the digits CNN's
    # fp16 convolutions run ~50x slower than fp32 (1.6 s a step), which the CI budget cannot carry.
    precisions = ["fp32", "bf16-mixed", "fp16-mixed"] if task == "scaling" else ["fp32", "bf16-mixed"]
    return Spec(
        task=task,
        adapter=adapter,
        mode="aligned",
        precision=draw(st.sampled_from(precisions)),
        seed=draw(st.integers(0, 2**16)),
        batch_size=draw(st.sampled_from([8, 16, 32])),
        steps=draw(st.integers(2, 5)),
        lr=draw(st.sampled_from([0.01, 0.05])),
        grad_accum=draw(st.sampled_from([1, 2])),
        options=options,
    )


def run_in_worker(spec: Spec, folder) -> dict:
    from harness.runner import RunOptions, run_spec

    return run_spec(spec, RunOptions(results_dir=folder, timeout_s=900))


def check_schema(result: dict) -> None:
    validate_result(result)
    assert result["summary"].keys() >= SUMMARY_KEYS, SUMMARY_KEYS - result["summary"].keys()
    assert result["environment"].keys() >= ENVIRONMENT_KEYS
    assert {"name", "style", "library", "library_version"} <= result["adapter"].keys()
    assert result["adapter"]["style"] in ("native", "inheritance", "callback", "high-level")
    assert "precision_impl" in result["notes"] and "precision_observed" in result["notes"]
    assert result["flops"]["per_step"] > 0 and result["peak_flops"]["flops_per_s"] > 0
    assert len(result["weights_digest"]) == 64
    assert result["task"]["data_digest"] and result["task"]["parameters"] > 0


@pytest.mark.parametrize("adapter_name", OTHER_ADAPTERS)
def test_declared_parity_holds_and_reruns_are_identical(adapter_name, tmp_path_factory):
    try:
        adapter = get_adapter(adapter_name)
    except RegistryError as error:
        pytest.fail(f"registered adapter cannot be imported: {error}")

    @given(spec=small_specs(adapter_name))
    def check(spec: Spec) -> None:
        note(f"reproduce with this spec: {spec.canonical_json()}")
        folder = tmp_path_factory.mktemp(adapter_name)
        reason = adapter.check(request_for(spec))
        if reason:  # the adapter says it cannot; then that is the whole contract for this spec
            assert isinstance(reason, str) and reason
            return
        run = run_in_worker if adapter.environment else run_inline
        native = run(replace(spec, adapter="native"), folder)
        first = run(spec, folder)
        again = run(replace(spec, repeat=1), folder)
        assert first["status"] == "ok", first["error"]
        check_schema(first)
        assert again["weights_digest"] == first["weights_digest"]
        assert again["trajectory"]["losses"] == first["trajectory"]["losses"]
        declared = adapter.expected_parity(request_for(spec))
        verdict = compare_files(native, first, folder)
        assert verdict.verdict == declared, verdict.describe()

    check()


def test_native_results_have_the_complete_schema(inline):
    check_schema(inline(Spec(task="scaling", adapter="native", batch_size=8, steps=3, lr=0.05)))
