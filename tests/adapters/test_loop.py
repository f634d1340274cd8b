"""A user's own training function as an adapter (adapters.loop): bitwise the native loop on digits.

The functions under test are named by import path, as a user names theirs: the worked example's
``bakeoff_example.train:train`` (from ``examples/bakeoff-example``, put on the path here) and the
functions below (``tests.adapters.test_loop:...``).
"""

from __future__ import annotations

import pytest

from harness.parity import compare_files
from harness.plan import unsupported_reason
from harness.plugins import with_code_identity
from harness.registry import PluginError, get_adapter, get_task
from harness.spec import Spec
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "bakeoff-example"
DIGITS = get_task("digits").defaults


@pytest.fixture(autouse=True)
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


def fp32_only_train(model, loader, optimizer, loss_fn, steps, probe):
    """The plain loop a user already has: no precision, no accumulation."""
    done = 0
    while done < steps:
        for inputs, targets in loader:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            probe.step_end(loss)
            done += 1
            if done == steps:
                return None  # trained in place


def accumulating_train(model, loader, optimizer, loss_fn, steps, probe, *, grad_accum):
    """Accumulation as a user writes it: the mean of ``grad_accum`` micro-batch gradients per step."""
    batches = iter(())
    for _ in range(steps):
        for _ in range(grad_accum):
            try:
                inputs, targets = next(batches)
            except StopIteration:
                batches = iter(loader)
                inputs, targets = next(batches)
            loss = loss_fn(model(inputs), targets)
            (loss / grad_accum).backward()
            probe.add_loss(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        probe.step_end()
    return model


def drifting_train(model, loader, optimizer, loss_fn, steps, probe):
    """A loop with a planted difference: from step 3 on, the learning rate is 1% higher."""
    done = 0
    while done < steps:
        for inputs, targets in loader:
            if done == 3:
                for group in optimizer.param_groups:
                    group["lr"] *= 1.01
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            probe.step_end(loss)
            done += 1
            if done == steps:
                return model
    return model


def bad_signature(model, loader):
    return model


def digits_spec(adapter: str, **fields) -> Spec:
    values = {"batch_size": DIGITS.batch_size, "steps": DIGITS.steps, "lr": DIGITS.lr, **fields}
    return with_code_identity(Spec(task="digits", adapter=adapter, **values))


def pair(inline, adapter: str, **fields):
    native, loop = inline(digits_spec("native", **fields)), inline(digits_spec(adapter, **fields))
    assert native["status"] == loop["status"] == "ok", (native["error"], loop["error"])
    return native, loop, compare_files(native, loop, inline.results_dir)


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_the_example_loop_reproduces_native_bitwise_on_digits(inline, precision):
    _, loop, verdict = pair(inline, "bakeoff_example.train:train", precision=precision)
    assert verdict.verdict == "bitwise", verdict.describe()
    assert verdict.steps_compared == DIGITS.steps == 60
    assert loop["adapter"]["plugin"]["target"] == "bakeoff_example.train:train"
    assert loop["notes"]["train_function"] == "bakeoff_example.train:train"
    assert get_adapter("bakeoff_example.train:train").expected_parity(_request(precision)) == "bitwise"


def _request(precision):
    from harness.plan import request_for

    return request_for(digits_spec("native", precision=precision))


def test_a_plain_fp32_loop_reproduces_native_and_is_refused_for_mixed_precision(inline):
    name = "tests.adapters.test_loop:fp32_only_train"
    _, loop, verdict = pair(inline, name, steps=20)
    assert verdict.verdict == "bitwise", verdict.describe()
    assert loop["adapter"]["style"] == "native" and loop["notes"]["precision_impl"] == "fp32"
    reason = unsupported_reason(digits_spec(name, precision="bf16-mixed"))
    assert "takes no 'precision' argument, so it cannot run bf16-mixed" in reason
    assert "grad_accum" in unsupported_reason(digits_spec(name, grad_accum=2, batch_size=32))


def test_a_loop_with_accumulation_reproduces_native_accumulation(inline):
    _, _, verdict = pair(inline, "tests.adapters.test_loop:accumulating_train", steps=12, grad_accum=2, batch_size=32)
    assert verdict.verdict == "bitwise", verdict.describe()


def test_a_planted_difference_is_found_at_its_step(inline):
    _, _, verdict = pair(inline, "tests.adapters.test_loop:drifting_train", steps=8)
    assert verdict.verdict in ("close", "diverged")
    # Step 3's loss is computed before its update: the first loss that differs is step 4's.
    assert verdict.first_differing_step == 4 and verdict.tensor is not None


def test_a_function_that_cannot_take_the_arguments_is_a_one_line_plugin_error():
    with pytest.raises(PluginError, match=r"a training function must take \(model, loader, optimizer") as caught:
        get_adapter("tests.adapters.test_loop:bad_signature")
    assert "\n" not in str(caught.value)
    with pytest.raises(PluginError, match="is a TaskDefaults, neither an Adapter subclass"):
        get_adapter("tests.adapters.test_loop:DIGITS")


@pytest.mark.slow
def test_the_example_loop_reproduces_native_ddp_bitwise(tmp_path):
    from harness.runner import RunOptions, run_spec

    options = RunOptions(results_dir=tmp_path, timeout_s=600)
    fields = {"world_size": 2, "batch_size": 32, "steps": 10}
    native = run_spec(digits_spec("native", **fields), options)
    loop = run_spec(digits_spec("bakeoff_example.train:train", **fields), options)
    assert native["status"] == loop["status"] == "ok", (native.get("output_tail"), loop.get("output_tail"))
    assert compare_files(native, loop, tmp_path).verdict == "bitwise"
