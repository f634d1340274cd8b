"""Parity: one pure stage that computes every verdict from results and their saved weights.

A verdict compares a candidate run with a partner run of the native loop: ``bitwise`` (every step
loss and every final weight equal), ``close`` (within the task's tolerance declared for that
precision), ``diverged`` (the first differing step, the first step beyond tolerance and the tensor
with the largest difference) or ``not-comparable`` (with the reason).

Whoever needs verdicts (bench, ingest, a shard merge, the report's file source, ``bakeoff run
--against``) calls :func:`stage` with the results it has and a way to load their weights; it gets
a :class:`Parity` per candidate: the comparison with each partner, in a fixed order.

Partners of a candidate (all native, ``aligned``, same task, options, seed, steps, lr, precision
and every spec field that changes the numbers):

- ``declared``: the identical configuration (world size, accumulation, micro-batch), first repeat,
  the same CPU thread layout. The adapter's ``expected_parity`` is a claim about this comparison;
  a repeat of native is compared with its first repeat (reproducibility).
- ``single-process``: for a DDP or accumulation run, one process without accumulation at the same
  global batch. It is the same math only when the task is batch-invariant (no BatchNorm, no
  per-sample randomness): otherwise the verdict is ``not-comparable`` with that reason. Float
  reductions run in another order (all-reduce, another thread layout), so ``close`` is the most it
  is expected to be.

Runs with different thread layouts are never treated as bitwise partners: the declared partner
must match it, and the cross-layout comparison is judged against the tolerance.

Verdicts are stored structured, in one canonical serialisation (:meth:`Parity.to_json`), and read
back with :meth:`Parity.from_json`; nothing parses the human-readable ``describe()`` text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.result import Result, load_weights

VERDICTS = ("bitwise", "close", "diverged", "not-comparable")
SEVERITY = {"bitwise": 0, "close": 1, "diverged": 2}
"""How far from identical each comparable verdict is: a verdict worse than declared is a finding."""

SAME_RUN_FIELDS = ("task", "options", "seed", "steps", "lr", "precision", "device", "deterministic")
"""Spec fields that must agree for two runs to compute the same training run. The global batch is
compared instead of its factors for the single-process partner; spec fields added later that change
the numbers (compilation, thread layout) join through :func:`same_run_key`."""

NOT_NUMERIC_FIELDS = frozenset({"adapter", "adapter_code", "mode", "world_size", "batch_size", "grad_accum", "repeat"})
"""Spec fields a partner may differ in (everything else must match; a plugin adapter's code identity
goes with the adapter, a plugin task's ``task_code`` must match)."""

PARITY_SCHEMA = "bakeoff.parity/2"
DECLARED, SINGLE_PROCESS, REPEAT = "declared", "single-process", "repeat"


def global_batch(spec: Mapping[str, Any]) -> int:
    return spec["batch_size"] * spec["world_size"] * spec["grad_accum"]


def same_run_key(spec: Mapping[str, Any]) -> str:
    """Everything in a spec that must agree between partners, as one comparable string."""
    kept = {k: v for k, v in spec.items() if k not in NOT_NUMERIC_FIELDS}
    return json.dumps(kept, sort_keys=True, default=str)


# --------------------------------------------------------------------------- verdicts


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
    against: str = DECLARED
    """Which partner: ``declared``, ``single-process`` or ``repeat``."""
    reference: str | None = None
    """The partner's spec id."""
    expected: str | None = None
    """What this comparison is expected to give (the adapter's declaration for ``declared``)."""
    weights_compared: bool = False
    """Whether the final weights were compared: tensor by tensor, or (for bitwise) by equal digests.
    False when only differing digests were available, so nothing is known about how far apart they are."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("loss_max_abs_diff", "weight_max_abs_diff", "weight_max_rel_diff"):
            if isinstance(data[key], float) and not math.isfinite(data[key]):
                data[key] = None  # JSON has no infinity (a zero-scale tensor's relative difference)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("loss_max_abs_diff", "weight_max_abs_diff", "weight_max_rel_diff"):
            if values.get(key) is None and key in values:
                values[key] = math.inf
        if values.get("verdict") not in VERDICTS:
            raise ValueError(f"unknown parity verdict {values.get('verdict')!r}")
        return cls(**values)

    @property
    def finding(self) -> str | None:
        """How this verdict contradicts its expectation, or None.

        Only a comparison that was made can contradict: a verdict worse than expected. One that
        could not be made (``not-comparable``: a failed run, no saved weights) leaves the expectation
        unverified, which :attr:`unverified` says; a verdict better than expected contradicts nothing.
        """
        if self.expected in (None, "not-comparable") or self.verdict not in SEVERITY:
            return None
        if SEVERITY[self.verdict] > SEVERITY.get(self.expected, 0):
            return f"expected {self.expected}, measured {self.verdict}"
        return None

    @property
    def unverified(self) -> bool:
        """An expectation of a comparable verdict that this comparison could not check."""
        return self.verdict == "not-comparable" and self.expected not in (None, "not-comparable")

    def describe(self) -> str:
        """One line for people (the MLflow note and UI); machines read :meth:`to_dict`."""
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


@dataclass(frozen=True)
class Parity:
    """Every comparison of one run, the declared partner's first."""

    comparisons: tuple[Verdict, ...] = field(default_factory=tuple)

    @property
    def primary(self) -> Verdict | None:
        """The comparison the run's headline verdict is: the declared partner's, else the first."""
        return next((v for v in self.comparisons if v.against in (DECLARED, REPEAT)), None) or (
            self.comparisons[0] if self.comparisons else None
        )

    def get(self, against: str) -> Verdict | None:
        return next((v for v in self.comparisons if v.against == against), None)

    @property
    def findings(self) -> list[str]:
        return [f"vs {v.against} partner: {v.finding}" for v in self.comparisons if v.finding]

    def to_json(self) -> str:
        """The canonical serialisation (sorted keys, no spaces): equal content, equal text."""
        document = {"schema": PARITY_SCHEMA, "comparisons": [v.to_dict() for v in self.comparisons]}
        return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | None) -> Parity | None:
        """Read :meth:`to_json` back; also the one structured form older runs carry (a single verdict)."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if isinstance(data, dict) and data.get("schema") == PARITY_SCHEMA:
            return cls(tuple(Verdict.from_dict(item) for item in data.get("comparisons", [])))
        if isinstance(data, dict) and data.get("verdict") in VERDICTS:  # bakeoff before parity/2
            return cls((Verdict.from_dict(data),))
        return None


# --------------------------------------------------------------------------- comparing two runs


def comparability_problem(reference: Result, candidate: Result) -> str | None:
    for name, result in (("reference", reference), ("candidate", candidate)):
        if not result.ok:
            return f"{name} run {result.status}: {result.error}"
        reason = result.notes.get("not_comparable")
        if reason:
            return reason
        if result.spec.mode == "defaults":
            return (f"{result.spec.adapter} defaults mode uses the library's own data order, optimizer and extras "
                    "by design")
    a, b = reference.spec.to_dict(), candidate.spec.to_dict()
    for name in SAME_RUN_FIELDS:
        if a[name] != b[name]:
            return f"different {name}: {a[name]!r} vs {b[name]!r}"
    if same_run_key(a) != same_run_key(b):
        differing = sorted(k for k in set(a) | set(b) if k not in NOT_NUMERIC_FIELDS and a.get(k) != b.get(k))
        return f"different {', '.join(differing)}"
    if global_batch(a) != global_batch(b):
        return f"different global batch: {global_batch(a)} vs {global_batch(b)}"
    return None


def compare_weights(
    reference: Mapping[str, Any], candidate: Mapping[str, Any]
) -> tuple[str | None, float, float, bool]:
    """(tensor with the largest abs difference, that difference, its relative size, all equal)."""
    import torch

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


def weights_within(reference: Mapping[str, Any], candidate: Mapping[str, Any], tolerance) -> bool:
    import torch

    return all(
        torch.allclose(
            candidate[key].double(), reference[key].double(), rtol=tolerance.weight_rtol, atol=tolerance.weight_atol
        )
        for key in reference
        if reference[key].is_floating_point()
    ) and all(torch.equal(candidate[k], reference[k]) for k in reference if not reference[k].is_floating_point())


def compare(
    reference: Result,
    candidate: Result,
    *,
    tolerance,
    reference_weights: Mapping[str, Any] | None,
    candidate_weights: Mapping[str, Any] | None,
) -> Verdict:
    """The verdict for ``candidate`` against ``reference`` (a native run)."""
    problem = comparability_problem(reference, candidate)
    if problem:
        return Verdict(verdict="not-comparable", reason=problem)
    ref_losses, cand_losses = reference.losses, candidate.losses
    steps = min(len(ref_losses), len(cand_losses))
    first_diff = next((i for i in range(steps) if ref_losses[i] != cand_losses[i]), None)
    beyond = next((i for i in range(steps) if not tolerance.losses_close(cand_losses[i], ref_losses[i])), None)
    loss_diff = max((abs(a - b) for a, b in zip(ref_losses, cand_losses)), default=0.0)
    if reference_weights is None or candidate_weights is None:
        if first_diff is None and reference.weights_digest == candidate.weights_digest:
            # Equal SHA-256 digests of every tensor are equal tensors: the same verdict the tensors give.
            return Verdict(verdict="bitwise", steps_compared=steps, weights_compared=True)
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
        "weights_compared": True,
    }
    if identical and first_diff is None:
        return Verdict(verdict="bitwise", **common)
    if beyond is None and weights_within(reference_weights, candidate_weights, tolerance):
        return Verdict(verdict="close", reason="within the task's declared tolerance", **common)
    if beyond is None:
        common["first_step_beyond_tolerance"] = steps  # losses stayed close; the final weights did not
    return Verdict(verdict="diverged", reason="beyond the task's declared tolerance", **common)


# --------------------------------------------------------------------------- partners and the stage


def _is_native_reference(result: Result) -> bool:
    return result.spec.adapter == "native" and result.spec.mode == "aligned"


def _rank(result: Result) -> tuple:
    spec = result.spec
    return (spec.repeat, spec.world_size, spec.grad_accum, not result.ok, spec.spec_id)


def partners(candidate: Result, pool: Iterable[Result]) -> list[tuple[str, Result]]:
    """The (role, native run) pairs ``candidate`` is compared with, declared partner first."""
    spec = candidate.spec.to_dict()
    key, batch = same_run_key(spec), global_batch(spec)
    natives = [
        r for r in pool
        if _is_native_reference(r) and r.spec_id != candidate.spec_id and same_run_key(r.spec.to_dict()) == key
        and global_batch(r.spec.to_dict()) == batch
    ]
    found: list[tuple[str, Result]] = []
    is_native = _is_native_reference(candidate)
    same_shape = sorted(
        (r for r in natives if (r.spec.world_size, r.spec.grad_accum, r.spec.batch_size)
         == (candidate.spec.world_size, candidate.spec.grad_accum, candidate.spec.batch_size)),
        key=_rank,
    )
    if is_native:
        earlier = [r for r in same_shape if r.spec.repeat < candidate.spec.repeat]
        if earlier:
            found.append((REPEAT, earlier[0]))
    elif same_shape:
        found.append((DECLARED, same_shape[0]))
    if candidate.spec.world_size > 1 or candidate.spec.grad_accum > 1:
        single = sorted((r for r in natives if r.spec.world_size == 1 and r.spec.grad_accum == 1), key=_rank)
        if single:
            found.append((SINGLE_PROCESS, single[0]))
    return found


WeightsLookup = Callable[[Result], Mapping[str, Any] | None]
ToleranceLookup = Callable[[str, str], Any]
BatchInvariance = Callable[[str], bool]


def task_tolerance(task: str, precision: str):
    from harness.registry import get_task  # the registry imports the task modules (torch): only when judging

    return get_task(task).tolerances[precision]


def task_batch_invariant(task: str) -> bool:
    from harness.registry import get_task  # as above

    return bool(get_task(task).batch_invariant)


def weights_from(folders: Sequence[Path]) -> WeightsLookup:
    """Load a result's saved weights from the first of ``folders`` that holds them (cached per file)."""
    cache: dict[Path, Mapping[str, Any] | None] = {}

    def lookup(result: Result) -> Mapping[str, Any] | None:
        if not result.weights_file:
            return None
        for folder in folders:
            path = Path(folder) / result.weights_file
            if path in cache:
                return cache[path]
            if path.exists():
                cache[path] = load_weights(path)
                return cache[path]
        return None

    return lookup


def judge(
    role: str,
    reference: Result,
    candidate: Result,
    *,
    weights: WeightsLookup,
    tolerance: ToleranceLookup = task_tolerance,
    batch_invariant: BatchInvariance = task_batch_invariant,
) -> Verdict:
    """One comparison, with what it is expected to give and the partner it was against."""
    expected = candidate.declared_parity if role == DECLARED else ("bitwise" if role == REPEAT else "close")
    context = {"against": role, "reference": reference.spec_id, "expected": expected}
    if role == SINGLE_PROCESS and not _safe(batch_invariant, candidate.spec.task):
        return Verdict(
            verdict="not-comparable", **{**context, "expected": "not-comparable"},
            reason=(f"task {candidate.spec.task} is not batch-invariant (its math depends on the batch's "
                    "composition, e.g. BatchNorm statistics), so a split batch cannot reproduce one process"),
        )
    if role in (DECLARED, REPEAT):
        differing = layout_difference(reference, candidate)
        if differing:
            return Verdict(verdict="not-comparable", **context, reason=f"different {differing}: not bitwise partners")
    try:
        verdict = compare(
            reference, candidate, tolerance=tolerance(reference.spec.task, reference.spec.precision),
            reference_weights=weights(reference), candidate_weights=weights(candidate),
        )
    except (ValueError, KeyError, OSError) as error:
        verdict = Verdict(verdict="not-comparable", reason=f"comparison failed: {error}")
    return Verdict(**{**asdict(verdict), **context})


def layout_difference(reference: Result, candidate: Result) -> str | None:
    """What besides the spec makes the two runs' float arithmetic differ (both recorded it), or None."""
    a, b = reference.kernel_layout, candidate.kernel_layout
    differing = [f"{name} ({a[name]} vs {b[name]})" for name in a if name in b and a[name] != b[name]]
    return ", ".join(differing) or None


def _safe(predicate: BatchInvariance, task: str) -> bool:
    try:
        return predicate(task)
    except Exception:  # a task this checkout does not know: assume the math is batch-invariant
        return True


def stage(
    candidates: Iterable[Result],
    pool: Iterable[Result],
    *,
    weights: WeightsLookup,
    tolerance: ToleranceLookup = task_tolerance,
    batch_invariant: BatchInvariance = task_batch_invariant,
) -> dict[str, Parity]:
    """spec_id → Parity for every candidate with at least one partner in ``pool`` (candidates may be in it)."""
    pool = list(pool)
    out = {}
    for candidate in candidates:
        found = partners(candidate, pool)
        if found:
            out[candidate.spec_id] = Parity(tuple(
                judge(role, reference, candidate, weights=weights, tolerance=tolerance,
                      batch_invariant=batch_invariant)
                for role, reference in found
            ))
    return out


def compare_files(
    reference: Result | Mapping[str, Any], candidate: Result | Mapping[str, Any], results_dir: Path | tuple[Path, Path]
) -> Verdict:
    """Two results (documents or Results) compared with their weights loaded from beside them."""
    ref = reference if isinstance(reference, Result) else Result.from_dict(dict(reference))
    cand = candidate if isinstance(candidate, Result) else Result.from_dict(dict(candidate))
    ref_dir, cand_dir = results_dir if isinstance(results_dir, tuple) else (results_dir, results_dir)
    verdict = compare(
        ref, cand, tolerance=task_tolerance(ref.spec.task, ref.spec.precision),
        reference_weights=weights_from([ref_dir])(ref), candidate_weights=weights_from([cand_dir])(cand),
    )
    return Verdict(**{**asdict(verdict), "reference": ref.spec_id})
