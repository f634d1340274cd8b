"""The parity stage: partners, expectations and the canonical serialisation, on planted results."""

from __future__ import annotations

import json

import pytest
import torch

from harness import parity
from harness.parity import DECLARED, REPEAT, SINGLE_PROCESS, Parity, Verdict
from harness.result import Result, base_result, weights_digest
from harness.spec import Spec

STEPS = 4


def planted(
    adapter: str = "native",
    *,
    task: str = "digits",
    world_size: int = 1,
    batch_size: int = 64,
    grad_accum: int = 1,
    repeat: int = 0,
    mode: str = "aligned",
    threads: int = 2,
    shift: float = 0.0,
    declared: str | None = "bitwise",
    precision: str = "fp32",
) -> tuple[Result, dict[str, torch.Tensor]]:
    """A finished result with losses and weights we choose: ``shift`` moves both away from native's."""
    spec = Spec(task=task, adapter=adapter, mode=mode, world_size=world_size, batch_size=batch_size,
                grad_accum=grad_accum, repeat=repeat, steps=STEPS, lr=0.05, precision=precision)
    weights = {"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) + shift}
    data = base_result(spec, status="ok")
    data["trajectory"] = {"losses": [2.0 - 0.1 * i + shift for i in range(STEPS)],
                          "step_end_ns": [1000 * (i + 1) for i in range(STEPS)]}
    data["environment"] = {"torch_threads": threads}
    data["weights_digest"] = weights_digest(weights)
    data["weights_file"] = f"{spec.spec_id}.weights.pt"
    data["declared_parity"] = declared if adapter != "native" else None
    return Result.from_dict(data), weights


def run_stage(*entries, **kwargs):
    results = [result for result, _ in entries]
    weights = {result.spec_id: tensors for result, tensors in entries}
    return parity.stage(results, results, weights=lambda r: weights.get(r.spec_id),
                        batch_invariant=kwargs.pop("batch_invariant", lambda task: task != "tabular"), **kwargs)


def test_an_aligned_ddp_run_carries_both_verdicts():
    native_1, native_2 = planted(), planted(world_size=2, batch_size=32, threads=1)
    lightning_2 = planted("lightning", world_size=2, batch_size=32, threads=1)
    found = run_stage(native_1, native_2, lightning_2)[lightning_2[0].spec_id]
    declared, single = found.get(DECLARED), found.get(SINGLE_PROCESS)
    assert (declared.reference, declared.verdict, declared.expected) == (native_2[0].spec_id, "bitwise", "bitwise")
    assert (single.reference, single.expected) == (native_1[0].spec_id, "close")
    assert single.verdict == "bitwise"  # the planted runs agree exactly, and a fact is reported as measured
    assert found.primary is declared and found.findings == []


def test_a_batch_dependent_task_is_not_comparable_across_a_split_batch_never_diverged():
    native_1 = planted(task="tabular")
    native_2 = planted(task="tabular", world_size=2, batch_size=32, threads=1, shift=0.5)
    candidate = planted("lightning", task="tabular", world_size=2, batch_size=32, threads=1, shift=0.5)
    found = run_stage(native_1, native_2, candidate)[candidate[0].spec_id]
    single = found.get(SINGLE_PROCESS)
    assert single.verdict == "not-comparable" and "not batch-invariant" in single.reason
    assert single.finding is None
    assert found.get(DECLARED).verdict == "bitwise"  # same world size: the same math, shifted alike


def test_another_thread_layout_is_never_a_bitwise_partner():
    native, lightning = planted(threads=2), planted("lightning", threads=1)
    verdict = run_stage(native, lightning)[lightning[0].spec_id].get(DECLARED)
    assert verdict.verdict == "not-comparable" and "threads per rank (2 vs 1)" in verdict.reason
    assert verdict.finding is None and verdict.unverified  # a gap in the suite, not the adapter's fault


def test_a_declared_bitwise_run_that_diverges_is_a_finding():
    native, fastai = planted(), planted("fastai", shift=0.3)
    verdict = run_stage(native, fastai)[fastai[0].spec_id].get(DECLARED)
    assert verdict.verdict == "diverged" and verdict.first_differing_step == 0
    assert verdict.tensor == "layer.weight" and verdict.weight_max_abs_diff == pytest.approx(0.3)
    assert verdict.finding == "expected bitwise, measured diverged"


def test_native_repeats_are_compared_with_the_first_repeat_and_native_ddp_with_one_process():
    first, second = planted(), planted(repeat=1)
    ddp = planted(world_size=2, batch_size=32, threads=1)
    found = run_stage(first, second, ddp)
    assert first[0].spec_id not in found  # the reference itself
    assert found[second[0].spec_id].get(REPEAT).verdict == "bitwise"
    assert [v.against for v in found[ddp[0].spec_id].comparisons] == [SINGLE_PROCESS]


def test_accumulation_has_a_same_shape_partner_and_a_single_process_one():
    native, native_acc = planted(), planted(batch_size=32, grad_accum=2)
    hf_acc = planted("hf", batch_size=32, grad_accum=2)
    found = run_stage(native, native_acc, hf_acc)[hf_acc[0].spec_id]
    assert found.get(DECLARED).reference == native_acc[0].spec_id
    assert found.get(SINGLE_PROCESS).reference == native[0].spec_id


def test_every_verdict_is_computed_once_per_spec(monkeypatch):
    calls = []
    real = parity.compare
    monkeypatch.setattr(parity, "compare", lambda *a, **k: calls.append(a[1].spec_id) or real(*a, **k))
    entries = [planted(), planted(repeat=1), planted("lightning"), planted("keras"),
               planted(world_size=2, batch_size=32, threads=1)]
    found = run_stage(*entries)
    assert sorted(calls) == sorted(spec_id for spec_id, p in found.items() for _ in p.comparisons)
    assert len(calls) == len(set(calls)) == 4


def test_the_canonical_serialisation_round_trips_and_reads_the_older_single_verdict():
    native, candidate = planted(), planted("lightning", shift=1e-9)
    found = run_stage(native, candidate)[candidate[0].spec_id]
    text = found.to_json()
    assert Parity.from_json(text) == found
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    legacy = {"verdict": "close", "reason": "within", "steps_compared": 4, "first_differing_step": 1,
              "first_step_beyond_tolerance": None, "loss_max_abs_diff": 1e-7, "tensor": "w",
              "weight_max_abs_diff": 1e-7, "weight_max_rel_diff": float("inf")}
    (old,) = Parity.from_json(json.dumps(legacy)).comparisons
    assert old.verdict == "close" and old.weight_max_rel_diff == float("inf") and old.expected is None
    assert Parity.from_json("close: losses differ first at step 1") is None  # prose is never parsed


def test_defaults_mode_is_not_comparable_and_meets_its_declaration():
    native, defaults = planted(), planted("lightning", mode="defaults", declared="not-comparable")
    verdict = run_stage(native, defaults)[defaults[0].spec_id].primary
    assert verdict.verdict == "not-comparable" and "defaults mode" in verdict.reason
    assert verdict.finding is None


def test_a_verdict_better_than_declared_is_not_a_finding():
    assert Verdict(verdict="bitwise", expected="close").finding is None
    assert Verdict(verdict="close", expected="bitwise").finding == "expected bitwise, measured close"
