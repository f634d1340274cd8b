"""The precision audit: a run is labelled with the precision it was seen to train in, or fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.precision_audit import PrecisionAudit, precision_problem
from tests.conftest import small_spec


def test_audit_records_autocast_outputs_and_ignores_eval_and_no_grad():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    audit = PrecisionAudit(model)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.ones(2, 4))  # eval forwards are not training: not recorded
    model.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.ones(2, 4))
    assert audit.observed == {}
    with torch.autocast("cpu", dtype=torch.float16):
        model(torch.ones(2, 4))
    assert set(audit.observed) == {"Linear", "LayerNorm"} and audit.observed["Linear"] == {"float16"}
    assert audit.judged == {"Linear": {"float16"}}  # LayerNorm's autocast policy differs by device: not judged
    audit.detach()
    model(torch.ones(2, 4))  # fp32 now, but the hooks are gone
    assert audit.record()["outputs"]["Linear"] == ["float16"]
    assert not audit.attached


@pytest.mark.parametrize(
    ("precision", "judged", "problem"),
    [
        ("fp16-mixed", {"Linear": {"float16"}}, None),
        ("fp16-mixed", {"Linear": {"float32", "float16"}}, None),  # e.g. a symbolic build forward outside autocast
        ("fp16-mixed", {"Linear": {"float32"}}, "without float16 autocast"),
        ("fp16-mixed", {"Linear": {"bfloat16"}}, "without float16 autocast"),  # Lightning's silent swap on CPU
        ("fp16-mixed", {"Linear": {"float16"}, "Conv2d": {"bfloat16"}}, "some outputs were bfloat16"),
        ("bf16-mixed", {"Conv2d": {"bfloat16"}}, None),
        ("bf16-mixed", {"Conv2d": {"float32"}}, "without bfloat16 autocast"),
        ("fp32", {"Linear": {"float32"}}, None),
        ("fp32", {"Linear": {"float16"}}, "fp32 was requested but Linear produced float16"),
        ("fp16-mixed", {}, None),  # nothing autocast lowers ran: no evidence either way
    ],
)
def test_precision_problem(precision, judged, problem):
    found = precision_problem(precision, judged)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_a_run_that_trains_fp32_under_an_fp16_label_fails_with_the_reason(inline, plugin_env):
    result = inline(small_spec(adapter="fault-silent-fp32", precision="fp16-mixed", options={"width": 8}))
    assert result["status"] == "failed"
    assert result["error"].startswith("precision not as labelled: fp16-mixed was requested but Linear produced only")
    assert result["notes"]["precision_observed"]["outputs"] == {"Linear": ["float32"]}
    honest = inline(small_spec(adapter="fault-silent-fp32", precision="fp32", options={"width": 8}))
    assert honest["status"] == "ok", honest["error"]  # the same adapter is fine when the label is true
