"""A parity verdict from one command: run a spec, run (or find) its partner, judge the pair.

``bakeoff run ... --against native`` and ``bakeoff.testing.assert_parity`` both come here. The
partner is the same run (task, options, seed, steps, learning rate, precision, global batch) on
another adapter in ``aligned`` mode, optionally at another world size; its per-rank batch is
derived from the candidate's global batch, so nobody halves a batch size by hand. A partner
whose ``ok`` result already exists is reused (resume), the candidate always runs.

What the verdict is held to:

- ``--expect`` (or ``expect=``), when given: the user's own claim;
- against native at the same world size and accumulation: the adapter's ``expected_parity``;
- against native at another world size (DDP against one process at the same global batch):
  ``close`` for a task whose math does not depend on the batch split (``batch_invariant``), no
  claim otherwise;
- anything else: no claim (the verdict is printed, never judged).

A verdict meets a claim when it is at least as strong (bitwise > close > diverged); a
``not-comparable`` verdict meets only "no claim". The comparison itself is ``harness.parity``'s,
called in one place (:func:`judge`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.spec import Spec, SpecError

VERDICT_STRENGTH = {"bitwise": 0, "close": 1, "diverged": 2}
NO_CLAIM = "not-comparable"


def meets(verdict: str, declared: str) -> bool:
    """Whether ``verdict`` is at least as good as ``declared`` (a declared not-comparable claims nothing)."""
    if declared == NO_CLAIM:
        return True
    if verdict not in VERDICT_STRENGTH:
        return False
    return VERDICT_STRENGTH[verdict] <= VERDICT_STRENGTH[declared]


def partner_for(spec: Spec, adapter: str = "native", *, world_size: int | None = None) -> Spec:
    """The partner run of ``spec`` on ``adapter`` (aligned), at ``world_size`` ranks with the same global batch.

    A partner that would be ``spec`` itself (native against native) is its next repeat: a second,
    independent run of the same spec, which is the reproducibility question.
    """
    from harness.plugins import with_code_identity

    ranks = world_size or spec.world_size
    global_batch = spec.batch_size * spec.world_size * spec.grad_accum
    per_rank, remainder = divmod(global_batch, ranks * spec.grad_accum)
    if remainder or per_rank < 1:
        raise SpecError(
            f"the global batch {global_batch} does not split into {ranks} ranks x {spec.grad_accum} micro-batches"
        )
    partner = replace(spec, adapter=adapter, mode="aligned", world_size=ranks, batch_size=per_rank, adapter_code="")
    partner = with_code_identity(partner)
    if partner.spec_id == spec.spec_id:
        partner = replace(partner, repeat=spec.repeat + 1)
    return partner


def declared_verdict(spec: Spec, partner: Spec, expect: str | None = None) -> tuple[str, str]:
    """(the verdict the pair is held to, who claims it)."""
    from harness.plan import request_for
    from harness.registry import RegistryError, get_adapter, get_task

    if expect is not None:
        if expect not in (*VERDICT_STRENGTH, NO_CLAIM):
            raise SpecError(f"unknown verdict {expect!r}; choose one of: bitwise, close, diverged, not-comparable")
        return expect, "--expect"
    if partner.adapter != "native":
        return NO_CLAIM, f"nothing is declared against {partner.adapter} (give --expect to hold it to a verdict)"
    try:
        task = get_task(spec.task)
        adapter = get_adapter(spec.adapter)
    except RegistryError as error:
        return NO_CLAIM, f"no declaration: {error}"
    if partner.world_size == spec.world_size and partner.grad_accum == spec.grad_accum:
        return adapter.expected_parity(request_for(spec, task)), f"{spec.adapter}'s expected_parity"
    if task.batch_invariant:
        return "close", f"{spec.world_size} ranks against {partner.world_size} at the same global batch"
    return NO_CLAIM, f"task {spec.task!r} is not batch-invariant, so a different batch split changes its math"


def judge(candidate: dict[str, Any], partner: dict[str, Any], results_dir: Path):
    """The parity verdict of ``candidate`` against ``partner`` (weights read from ``results_dir``)."""
    from harness.parity import compare_files

    return compare_files(partner, candidate, results_dir)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    candidate: dict[str, Any]
    partner: dict[str, Any]
    verdict: Any
    """harness.parity.Verdict."""
    declared: str
    declared_by: str
    partner_reused: bool
    results_dir: Path

    @property
    def as_declared(self) -> bool:
        return meets(self.verdict.verdict, self.declared)

    def line(self) -> str:
        """One line: the verdict, the claim and whether it holds."""
        partner = Spec.from_dict(self.partner["spec"])
        against = partner.adapter + (f" ws{partner.world_size}" if partner.world_size > 1 else "")
        if partner.repeat != Spec.from_dict(self.candidate["spec"]).repeat:
            against += f" (repeat {partner.repeat}: the same spec run again)"
        if self.declared == NO_CLAIM:
            judgement = f"no declared verdict ({self.declared_by})"
        elif self.as_declared:
            judgement = f"declared {self.declared} ({self.declared_by}): holds"
        else:
            judgement = f"declared {self.declared} ({self.declared_by}): WORSE THAN DECLARED"
        return f"verdict vs {against}: {self.verdict.describe()} | {judgement}"


def _unsupported(spec: Spec, reason: str, results_dir: Path) -> dict[str, Any]:
    from harness.result import base_result, result_path, write_result

    result = base_result(spec, status="unsupported", error=reason)
    write_result(result_path(results_dir, spec), result)
    return result


def run_against(
    spec: Spec,
    partner: Spec,
    *,
    results_dir: Path,
    run: Callable[[Spec], dict[str, Any]],
    expect: str | None = None,
    progress: Callable[[str, dict[str, Any], bool], None] | None = None,
) -> Outcome:
    """Run ``spec`` with ``run`` (the runner, or an in-process run), find or run ``partner``, judge them."""
    from harness.plan import unsupported_reason
    from harness.runner import existing_result

    declared, declared_by = declared_verdict(spec, partner, expect)
    results: dict[str, dict[str, Any]] = {}
    reused = False
    for role, which in (("partner", partner), ("candidate", spec)):
        reason = unsupported_reason(which)
        done = existing_result(which, results_dir) if role == "partner" else None
        if reason:
            result, skipped = _unsupported(which, reason, results_dir), False
        elif done is not None and done["status"] == "ok":
            result, skipped = done, True
        else:
            result, skipped = run(which), False
        reused = reused or (role == "partner" and skipped)
        results[role] = result
        if progress:
            progress(role, result, skipped)
    verdict = judge(results["candidate"], results["partner"], results_dir)
    return Outcome(
        candidate=results["candidate"],
        partner=results["partner"],
        verdict=verdict,
        declared=declared,
        declared_by=declared_by,
        partner_reused=reused,
        results_dir=results_dir,
    )
