"""One contract, every registered adapter (present and future).

For random small specs the parity verdict against native equals the verdict the adapter
declares for that configuration, a repeated run is bitwise identical, and the result has the
complete schema. Hypothesis shrinks a failing example and prints it as a spec (JSON) that
`bakeoff run` can reproduce. Declarations are claims about any model, so they are also checked
on every model family of the ``families`` task (weight reuse, tied weights, padding, BatchNorm,
dropout, a fused LSTM, losses in fp32 and in the autocast dtype), in fp32 and bf16-mixed.
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
from harness.suites import VERSION_MATRIX
from harness.worker import run_inline
from tasks.families import FAMILIES


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
    "launch_s",
    "library_startup_s",
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
    task = draw(st.sampled_from(["scaling", "digits", "tabular", "families"]))
    options = {}
    if task == "scaling":
        options = {"width": draw(st.sampled_from([8, 32]))}
    elif task == "families":
        options = {"family": draw(st.sampled_from(sorted(FAMILIES)))}
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
        lr=draw(st.sampled_from([0.01, 0.05])) if task in ("scaling", "digits") else 3e-3,
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
    autocast = result["notes"]["autocast"]  # what the model's first training forward actually ran under
    mixed = result["spec"]["precision"] != "fp32"
    assert autocast["enabled"] is mixed, autocast
    if mixed:
        expected_dtype = {"bf16-mixed": "bfloat16", "fp16-mixed": "float16"}[result["spec"]["precision"]]
        assert autocast["dtype"] == expected_dtype and isinstance(autocast["cache_enabled"], bool), autocast
    assert result["declared_parity"] in ("bitwise", "close", "diverged", "not-comparable")
    from tests.tasks.test_traits import allowed_undetermined

    allowed = allowed_undetermined(result["spec"]["task"], result["spec"]["options"], result["spec"]["device"])
    assert set(result["task"]["traits"]["undetermined"]) == allowed, result["task"]["traits"]
    assert result["coverage"]["recorded"], result["coverage"]
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
        assert first["declared_parity"] == declared  # the worker's declaration (detected traits) agrees
        verdict = compare_files(native, first, folder)
        assert verdict.verdict == declared, verdict.describe()
        assert first["coverage"]["order"]["digest"] == native["coverage"]["order"]["digest"]  # the same batches

    check()


FAMILY_SPEC = {"task": "families", "batch_size": 16, "steps": 3, "lr": 3e-3, "seed": 7}
_native_results: dict[str, dict] = {}


def native_result(spec: Spec, folder) -> dict:
    """The native partner of ``spec``, run once per module (every adapter compares with it)."""
    reference = replace(spec, adapter="native")
    if reference.spec_id not in _native_results:
        _native_results[reference.spec_id] = run_inline(reference, folder)
    return _native_results[reference.spec_id]


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


# The older library releases the standard suite runs (each in its own environment: slow).
VERSIONED_ADAPTERS = [pytest.param(name, marks=pytest.mark.slow) for name in VERSION_MATRIX]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("adapter_name", OTHER_ADAPTERS + VERSIONED_ADAPTERS)
def test_declared_parity_holds_on_every_model_family(adapter_name, family, family_folder):
    """Each adapter's declaration, for each family's traits, is the verdict it gets: fp32 and bf16-mixed."""
    adapter = get_adapter(adapter_name)
    run = run_in_worker if adapter.environment else run_inline
    for precision in ("fp32", "bf16-mixed"):
        spec = Spec(adapter=adapter_name, precision=precision, options={"family": family}, **FAMILY_SPEC)
        reason = adapter.check(request_for(spec))
        if reason:
            continue
        native = native_result(spec, family_folder)
        result = run(spec, family_folder)
        assert native["status"] == "ok" and result["status"] == "ok", (native["error"], result["error"])
        check_schema(result)
        declared = adapter.expected_parity(request_for(spec))
        assert result["declared_parity"] == declared, f"{spec.label}: worker and orchestrator declare differently"
        verdict = compare_files(native, result, family_folder)
        assert verdict.verdict == declared, f"{spec.label}: declared {declared}, got {verdict.describe()}"


def test_native_results_have_the_complete_schema(inline):
    check_schema(inline(Spec(task="scaling", adapter="native", batch_size=8, steps=3, lr=0.05)))
