"""Keras 3 (torch backend): parity with native, defaults mode, what Keras refuses, and why."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import Request
from adapters.keras import DISTRIBUTED_REASON, KerasAdapter, TaskModel
from harness.environment import REPO_ROOT
from harness.parity import compare_files
from harness.plan import unsupported_reason
from harness.registry import get_task
from harness.runner import RunOptions, run_spec
from tests.conftest import small_spec

# Small specs per task; tabular's 16 steps of 32 cross an epoch boundary (455 training rows),
# where a loop that opens an extra loader iterator would shift the data order or the RNG.
ALIGNED_CASES = {
    "digits": {"batch_size": 32, "steps": 6},
    "tabular": {"batch_size": 32, "steps": 16},
    "charlm": {"batch_size": 4, "steps": 3, "options": {"characters": 4000, "block_size": 32, "width": 32}},
    "scaling": {"batch_size": 16, "steps": 8},
}


def task_spec(task: str, **fields):
    values = {"task": task, "lr": get_task(task).defaults.lr, **ALIGNED_CASES[task]}
    values.update(fields)
    return small_spec(**values)


def verdict(inline, spec):
    native = inline(replace(spec, adapter="native", mode="aligned"))
    keras = inline(replace(spec, adapter="keras"))
    assert native["status"] == keras["status"] == "ok", keras.get("error")
    return native, keras, compare_files(native, keras, inline.results_dir)


@pytest.mark.parametrize("task", sorted(ALIGNED_CASES))
def test_aligned_fp32_is_bitwise_with_native(inline, task):
    _, keras, result = verdict(inline, task_spec(task))
    assert result.verdict == "bitwise", result.describe()
    declared = KerasAdapter().expected_parity(
        Request(task=get_task("digits"), mode="aligned", precision="fp32", world_size=1, grad_accum=1)
    )
    assert declared == result.verdict
    assert keras["notes"]["optimizer"].startswith(f"torch.optim.{get_task(task).optimizer.name}")
    assert len(keras["trajectory"]["losses"]) == keras["spec"]["steps"]


@pytest.mark.parametrize("task", ["digits", "scaling"])
def test_aligned_bf16_runs_autocast_in_train_step_and_matches_native_bitwise(inline, task):
    spec = task_spec(task, precision="bf16-mixed")
    _, keras, result = verdict(inline, spec)
    assert result.verdict == "bitwise", result.describe()
    assert keras["notes"]["precision_impl"] == (
        "torch.autocast(cpu, bfloat16, cache_enabled=True) around forward + loss inside the Keras train_step"
    )
    fp32 = inline(replace(spec, adapter="keras", precision="fp32"))
    assert fp32["trajectory"]["losses"] != keras["trajectory"]["losses"]  # bf16 really ran


def test_aligned_accumulation_is_bitwise_with_native_accumulation(inline):
    _, _, result = verdict(inline, task_spec("tabular", batch_size=16, grad_accum=2, steps=8))
    assert result.verdict == "bitwise", result.describe()


def test_returns_the_task_module_itself(inline):
    result = inline(task_spec("digits", adapter="keras"))
    native = inline(task_spec("digits"))
    weights = torch.load(inline.results_dir / result["weights_file"])
    assert set(weights) == set(torch.load(inline.results_dir / native["weights_file"]))


@given(
    seed=st.integers(0, 1000),
    batch=st.sampled_from([8, 16, 32]),
    width=st.sampled_from([8, 32, 64]),
    steps=st.integers(1, 6),
    accum=st.sampled_from([1, 2]),
)
def test_aligned_is_bitwise_for_random_small_specs(tmp_path_factory, seed, batch, width, steps, accum):
    from harness.worker import run_inline

    folder = tmp_path_factory.mktemp("keras")
    spec = small_spec(
        seed=seed, batch_size=batch, steps=steps, grad_accum=accum, options={"width": width, "samples": 256}
    )
    native = run_inline(spec, folder)
    keras = run_inline(replace(spec, adapter="keras"), folder)
    assert keras["status"] == "ok", keras.get("error")
    assert compare_files(native, keras, folder).verdict == "bitwise"


@pytest.mark.parametrize("accum", [1, 2])
def test_defaults_runs_exactly_the_requested_optimizer_steps_with_keras_own_parts(inline, accum):
    spec = task_spec("digits", adapter="keras", mode="defaults", batch_size=32 // accum, grad_accum=accum, steps=12)
    result = inline(spec)
    assert result["status"] == "ok", result.get("error")
    losses = result["trajectory"]["losses"]
    assert len(losses) == 12
    assert losses[-1] < losses[0]
    notes = result["notes"]
    assert notes["optimizer"].startswith("keras.optimizers.SGD(")
    assert ("gradient_accumulation_steps" in notes["optimizer"]) == (accum > 1)
    assert notes["inferred"]["metric 'accuracy'"] == "SparseCategoricalAccuracy"
    native = inline(task_spec("digits", batch_size=32 // accum, grad_accum=accum, steps=12))
    assert compare_files(native, result, inline.results_dir).verdict == "not-comparable"


def test_defaults_runs_adamw_on_the_sequence_task(inline):
    result = inline(task_spec("charlm", adapter="keras", mode="defaults"))
    assert result["status"] == "ok", result.get("error")
    assert result["notes"]["optimizer"].startswith("keras.optimizers.AdamW(")
    assert "'weight_decay': 0.1" in result["notes"]["optimizer"]


def test_keras_mixed_policy_does_not_reach_a_wrapped_torch_module():
    """The facts behind refusing bf16 in defaults mode, measured on the installed Keras."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        digits = get_task("digits")
        data = digits.build_data(digits.resolve_options({}))
        images = data.train.tensors[0][:4]
        with pytest.raises(RuntimeError, match="BFloat16"):
            TaskModel(digits.build_model(0, digits.resolve_options({}), data))(images, training=True)
        charlm = get_task("charlm")
        options = charlm.resolve_options(ALIGNED_CASES["charlm"]["options"])
        data = charlm.build_data(options)
        output = TaskModel(charlm.build_model(0, options, data))(data.train.tensors[0][:2], training=True)
        assert output.dtype == torch.float32  # token ids are not cast: the whole model stays fp32
    finally:
        keras.config.set_dtype_policy(previous)


def test_defaults_bf16_is_refused_with_the_reason(inline):
    spec = task_spec("digits", adapter="keras", mode="defaults", precision="bf16-mixed")
    assert "mixed_bfloat16" in unsupported_reason(spec)
    result = inline(spec)
    assert result["status"] == "unsupported"
    assert "TorchModuleWrapper" in result["error"]


def test_ddp_is_an_unsupported_result_not_a_crash(tmp_path):
    spec = task_spec("digits", adapter="keras", world_size=2, batch_size=16, steps=2)
    assert unsupported_reason(spec) == DISTRIBUTED_REASON
    result = run_spec(spec, RunOptions(results_dir=tmp_path, timeout_s=180))
    assert result["status"] == "unsupported", result.get("error")
    assert result["error"] == DISTRIBUTED_REASON


def test_another_keras_backend_is_refused_clearly():
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", "import adapters.keras"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert completed.returncode != 0
    assert "needs KERAS_BACKEND=torch (it is set to 'jax')" in completed.stderr


class ShapelessDigits(type(get_task("digits"))):
    """digits as a task that does not declare its input shape (as a plugin author might write it)."""

    def build_data(self, options):
        data = super().build_data(options)
        data.inferable = replace(data.inferable, input_shape=None)
        return data


def test_a_task_without_an_input_shape_is_refused_before_training_with_the_reason(inline):
    spec = replace(task_spec("digits", adapter="keras"), task="tests.adapters.test_keras:ShapelessDigits")
    assert unsupported_reason(spec) is None  # the shape is only known once the data is built
    result = inline(spec)
    assert result["status"] == "unsupported"
    assert "declares none: set Inferable(input_shape=...)" in result["error"]
    assert result["trajectory"]["losses"] == []
    defaults = inline(replace(spec, mode="defaults"))  # Keras' own fit infers the shape from the tensors
    assert defaults["status"] == "ok", defaults["error"]
