"""The native loop still reproduces the checked-in trajectories.

On the machine class that recorded them (same CPU model, torch build and thread count) the
promise is bitwise: every step loss and the weights digest. Elsewhere float kernels may differ
legitimately, so the check is the task's declared fp32 tolerance, and the test says which
promise it checked.
"""

from __future__ import annotations

import json

import pytest

from harness.registry import get_task
from harness.spec import Spec
from tests.golden.regenerate import GOLDEN_DIR, GOLDEN_TASKS, golden_spec, machine


@pytest.mark.parametrize("task", GOLDEN_TASKS)
def test_native_reproduces_golden_trajectory(inline, task):
    golden = json.loads((GOLDEN_DIR / f"{task}.json").read_text())
    spec = Spec.from_dict(golden["spec"])
    assert spec == golden_spec(task), "golden spec changed: regenerate deliberately"
    result = inline(spec, save_weights=False)
    assert result["status"] == "ok"
    losses = result["trajectory"]["losses"]
    assert len(losses) == len(golden["losses"])
    if golden["machine"] == machine():
        assert losses == golden["losses"], "native trajectory changed bitwise on the recording machine"
        assert result["weights_digest"] == golden["weights_digest"]
    else:
        tolerance = get_task(task).tolerances["fp32"]
        for step, (new, old) in enumerate(zip(losses, golden["losses"])):
            assert tolerance.losses_close(new, old), f"step {step}: {new} vs golden {old}"
