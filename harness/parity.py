"""Parity verdicts between two results: bitwise, close, diverged or not-comparable.

One mechanism for every adapter: compare the per-step losses and the final weights, and
when they are not bitwise equal, name the first step that differs, the first step beyond
the task's declared tolerance, and the tensor with the largest difference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.result import load_weights
from tasks.base import Tolerance

VERDICTS = ("bitwise", "close", "diverged", "not-comparable")

# Spec fields that must agree for two runs to compute the same training run. The global
# batch (batch_size x world_size x grad_accum) is compared instead of its factors, so DDP
# and accumulation runs can be compared with their single-process equivalents.
SAME_RUN_FIELDS = ("task", "options", "seed", "steps", "lr", "precision")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    verdict: str
    reason: str = ""
    steps_compared: int = 0
    first_differing_step: int | None = None
    """First step whose loss is not bitwise equal."""
    first_step_beyond_tolerance: int | None = None
    loss_max_abs_diff: float = 0.0
    tensor: str | None = None
    """The weight tensor with the largest absolute difference."""
    weight_max_abs_diff: float = 0.0
    weight_max_rel_diff: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.verdict == "bitwise":
            return f"bitwise ({self.steps_compared} steps, identical weights)"
        if self.verdict == "not-comparable":
            return f"not-comparable: {self.reason}"
        text = (
            f"{self.verdict}: losses differ first at step {self.first_differing_step} "
            f"(max |Δloss| {self.loss_max_abs_diff:.3g}); largest weight difference in {self.tensor} "
            f"(abs {self.weight_max_abs_diff:.3g}, rel {self.weight_max_rel_diff:.3g})"
        )
        if self.verdict == "diverged" and self.first_step_beyond_tolerance is not None:
            text += f"; beyond tolerance from step {self.first_step_beyond_tolerance}"
        return text


def global_batch(spec: dict[str, Any]) -> int:
    return spec["batch_size"] * spec["world_size"] * spec["grad_accum"]


def comparability_problem(reference: dict[str, Any], candidate: dict[str, Any]) -> str | None:
    for name, result in (("reference", reference), ("candidate", candidate)):
        if result["status"] != "ok":
            return f"{name} run {result['status']}: {result.get('error')}"
        reason = result.get("notes", {}).get("not_comparable")
        if reason:
            return reason
        if result["spec"]["mode"] == "defaults":
            adapter = result["spec"]["adapter"]
            return f"{adapter} defaults mode uses the library's own data order, optimizer and extras by design"
    a, b = reference["spec"], candidate["spec"]
    for field in SAME_RUN_FIELDS:
        if a[field] != b[field]:
            return f"different {field}: {a[field]!r} vs {b[field]!r}"
    if global_batch(a) != global_batch(b):
        return f"different global batch: {global_batch(a)} vs {global_batch(b)}"
    return None


def compare_weights(
    reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]
) -> tuple[str | None, float, float, bool]:
    """(tensor with the largest abs difference, that difference, its relative size, all equal)."""
    if set(reference) != set(candidate):
        missing = sorted(set(reference) ^ set(candidate))
        raise ValueError(f"state_dicts have different keys: {missing[:3]}")
    worst, worst_abs, worst_rel, identical = None, 0.0, 0.0, True
    for key in sorted(reference):
        a, b = reference[key], candidate[key]
        if a.shape != b.shape:
            raise ValueError(f"tensor {key} has shape {tuple(a.shape)} vs {tuple(b.shape)}")
        if torch.equal(a, b):
            continue
        identical = False
        difference = (a.double() - b.double()).abs()
        largest = float(difference.max())
        if largest > worst_abs or worst is None:
            scale = float(a.double().abs().max())
            worst, worst_abs, worst_rel = key, largest, largest / scale if scale else math.inf
    return worst, worst_abs, worst_rel, identical


def weights_within(
    reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], tolerance: Tolerance
) -> bool:
    return all(
        torch.allclose(
            candidate[key].double(), reference[key].double(), rtol=tolerance.weight_rtol, atol=tolerance.weight_atol
        )
        for key in reference
        if reference[key].is_floating_point()
    ) and all(torch.equal(candidate[k], reference[k]) for k in reference if not reference[k].is_floating_point())


def compare(
    reference: dict[str, Any],
    candidate: dict[str, Any],
    *,
    tolerance: Tolerance,
    reference_weights: dict[str, torch.Tensor] | None,
    candidate_weights: dict[str, torch.Tensor] | None,
) -> Verdict:
    """The verdict for ``candidate`` against ``reference`` (usually native)."""
    problem = comparability_problem(reference, candidate)
    if problem:
        return Verdict(verdict="not-comparable", reason=problem)
    ref_losses, cand_losses = reference["trajectory"]["losses"], candidate["trajectory"]["losses"]
    steps = min(len(ref_losses), len(cand_losses))
    first_diff = next((i for i in range(steps) if ref_losses[i] != cand_losses[i]), None)
    beyond = next((i for i in range(steps) if not tolerance.losses_close(cand_losses[i], ref_losses[i])), None)
    loss_diff = max((abs(a - b) for a, b in zip(ref_losses, cand_losses)), default=0.0)
    if reference_weights is None or candidate_weights is None:
        same_digest = reference.get("weights_digest") == candidate.get("weights_digest")
        if first_diff is None and same_digest:
            return Verdict(verdict="bitwise", steps_compared=steps)
        return Verdict(
            verdict="not-comparable",
            reason="final weights were not saved, so only the digests could be compared and they differ",
            steps_compared=steps,
            first_differing_step=first_diff,
            loss_max_abs_diff=loss_diff,
        )
    tensor, weight_abs, weight_rel, identical = compare_weights(reference_weights, candidate_weights)
    common = {
        "steps_compared": steps,
        "first_differing_step": first_diff,
        "first_step_beyond_tolerance": beyond,
        "loss_max_abs_diff": loss_diff,
        "tensor": tensor,
        "weight_max_abs_diff": weight_abs,
        "weight_max_rel_diff": weight_rel,
    }
    if identical and first_diff is None:
        return Verdict(verdict="bitwise", **common)
    if beyond is None and weights_within(reference_weights, candidate_weights, tolerance):
        return Verdict(verdict="close", reason="within the task's declared tolerance", **common)
    if beyond is None:
        common["first_step_beyond_tolerance"] = steps  # losses stayed close; the final weights did not
    return Verdict(verdict="diverged", reason="beyond the task's declared tolerance", **common)


def compare_files(
    reference: dict[str, Any], candidate: dict[str, Any], results_dir: Path | tuple[Path, Path]
) -> Verdict:
    """``compare`` with the weights loaded from beside the results and the task's tolerance."""
    from harness.registry import get_task

    ref_dir, cand_dir = results_dir if isinstance(results_dir, tuple) else (results_dir, results_dir)
    tolerance = get_task(reference["spec"]["task"]).tolerances[reference["spec"]["precision"]]

    def weights(result: dict[str, Any], folder: Path) -> dict[str, torch.Tensor] | None:
        name = result.get("weights_file")
        path = Path(folder) / name if name else None
        return load_weights(path) if path and path.exists() else None

    return compare(
        reference,
        candidate,
        tolerance=tolerance,
        reference_weights=weights(reference, ref_dir),
        candidate_weights=weights(candidate, cand_dir),
    )
