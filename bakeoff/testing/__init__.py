"""Parity assertions for a user's own CI: does my task, adapter or training loop still reproduce its partner?

::

    from bakeoff.testing import assert_parity

    def test_my_lightning_module_reproduces_my_loop():
        assert_parity("mypkg.tasks:MyTask", "mypkg.adapters:MyLightningAdapter", against="mypkg.train:train",
                      expect="bitwise")

    def test_lightning_bf16_is_what_it_declares():
        assert_parity("mypkg.tasks:MyTask", "lightning", precision="bf16-mixed")   # held to expected_parity

Each call runs the spec and its partner (the same run on ``against``, ``native`` by default, in
``aligned`` mode, at the same global batch), in this process when both are single-process
main-environment runs, otherwise in fresh worker processes (DDP, isolated environments such as
``lightning@2.1.4``). It returns the :class:`harness.against.Outcome` and raises
:class:`ParityAssertionError` when the verdict is worse than declared (``expect`` overrides the
declaration), naming the first divergent step and the tensor that differs most. The pytest plugin
(``bakeoff.pytest_plugin``, loaded automatically where bakeoff is installed) gives a ``bakeoff``
fixture that keeps one results folder per test session, so partners are run once and reused;
:mod:`bakeoff.testing.strategies` generates specs for property tests across adapters,
precisions and accumulation.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "OverheadAssertionError", "ParityAssertionError", "assert_overhead", "assert_parity", "assert_spec_parity",
    "make_spec", "parity_message",
]


class ParityAssertionError(AssertionError):
    """A pair of runs whose verdict is worse than declared (or that did not both run)."""

    def __init__(self, message: str, outcome: Any = None) -> None:
        super().__init__(message)
        self.outcome = outcome


def make_spec(
    task: str,
    adapter: str = "native",
    *,
    mode: str = "aligned",
    precision: str = "fp32",
    world_size: int = 1,
    grad_accum: int = 1,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    global_batch: int | None = None,
    lr: float | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "cpu",
):
    """A checked spec with the task's defaults filled in and its plugins' code identities (raises SpecError)."""
    from harness.plan import check_spec
    from harness.plugins import with_code_identity
    from harness.registry import RegistryError, get_task
    from harness.spec import Spec, SpecError

    try:
        defaults = get_task(task).defaults
    except RegistryError as error:
        raise SpecError(str(error)) from None
    if batch_size is not None and global_batch is not None:
        raise SpecError("give batch_size (per rank) or global_batch, not both")
    if global_batch is not None:
        if global_batch % (world_size * grad_accum):
            raise SpecError(f"global batch {global_batch} does not split into {world_size} x {grad_accum}")
        batch_size = global_batch // (world_size * grad_accum)
    spec = Spec(
        task=task,
        adapter=adapter,
        mode=mode,
        precision=precision,
        world_size=world_size,
        grad_accum=grad_accum,
        seed=seed,
        steps=steps if steps is not None else defaults.steps,
        batch_size=batch_size if batch_size is not None else defaults.batch_size,
        lr=lr if lr is not None else defaults.lr,
        options=dict(options or {}),
        device=device,
    )
    spec = with_code_identity(spec)
    check_spec(spec)
    return spec


def assert_parity(
    task: str,
    adapter: str = "native",
    *,
    against: str = "native",
    against_world_size: int | None = None,
    expect: str | None = None,
    results_dir: str | Path | None = None,
    in_process: bool | None = None,
    timeout_s: float = 600.0,
    **fields: Any,
):
    """Run ``adapter`` on ``task`` and its partner on ``against``; raise ParityAssertionError if worse than declared.

    ``fields`` are :func:`make_spec`'s (precision, world_size, grad_accum, seed, steps, batch_size,
    global_batch, lr, options, mode, device).
    """
    spec = make_spec(task, adapter, **fields)
    return assert_spec_parity(
        spec,
        against=against,
        against_world_size=against_world_size,
        expect=expect,
        results_dir=results_dir,
        in_process=in_process,
        timeout_s=timeout_s,
    )


def _isolated(adapter: str) -> bool:
    from harness.envs import declared_environment

    return declared_environment(adapter) is not None


def assert_spec_parity(
    spec,
    *,
    against: str = "native",
    against_world_size: int | None = None,
    expect: str | None = None,
    results_dir: str | Path | None = None,
    in_process: bool | None = None,
    timeout_s: float = 600.0,
):
    """:func:`assert_parity` for a spec already made (e.g. drawn by :func:`bakeoff.testing.strategies.specs`)."""
    from harness.against import partner_for, run_against
    from harness.runner import RunOptions, run_spec
    from harness.worker import run_inline

    partner = partner_for(spec, against, world_size=against_world_size)
    folder = Path(results_dir) if results_dir is not None else Path(tempfile.mkdtemp(prefix="bakeoff-parity-"))
    inline_ok = all(s.world_size == 1 and not _isolated(s.adapter) for s in (spec, partner))
    if in_process and not inline_ok:
        raise ValueError("in_process=True needs single-process runs in this environment (no DDP, no isolated adapter)")
    inline = inline_ok if in_process is None else in_process
    options = RunOptions(results_dir=folder, timeout_s=timeout_s)

    def run(which):
        return run_inline(which, folder) if inline else run_spec(which, options)

    outcome = run_against(spec, partner, results_dir=folder, run=run, expect=expect)
    if not (outcome.candidate["status"] == "ok" and outcome.partner["status"] == "ok" and outcome.as_declared):
        raise ParityAssertionError(parity_message(outcome), outcome)
    return outcome


def _label(result: dict[str, Any]) -> str:
    from harness.spec import Spec

    spec = Spec.from_dict(result["spec"])
    accumulation = f", {spec.grad_accum} micro-batches" if spec.grad_accum > 1 else ""
    return (
        f"{spec.task} on {spec.adapter} ({spec.mode} {spec.precision}, world size {spec.world_size}, "
        f"batch {spec.batch_size} per rank{accumulation}, seed {spec.seed}, {spec.steps} steps)"
    )


def parity_message(outcome) -> str:
    """What went wrong, readable in a test log: the verdict, the claim, the first divergent step and tensor."""
    from harness.result import result_path
    from harness.spec import Spec

    candidate, partner, verdict = outcome.candidate, outcome.partner, outcome.verdict
    head = f"{_label(candidate)} against {Spec.from_dict(partner['spec']).adapter}"
    lines = []
    for role, result in (("run", candidate), ("partner", partner)):
        if result["status"] != "ok":
            lines.append(f"the {role} did not finish: {result['status']}: {result.get('error')}")
    if not lines:
        lines.append(f"verdict {verdict.verdict}, declared {outcome.declared} ({outcome.declared_by})")
        if verdict.verdict == "not-comparable":
            lines.append(f"not comparable: {verdict.reason}")
        step = verdict.first_differing_step
        if step is not None:
            ours, theirs = candidate["trajectory"]["losses"][step], partner["trajectory"]["losses"][step]
            lines.append(
                f"first divergent step: {step} of {verdict.steps_compared} (loss {ours!r} vs {theirs!r}; "
                f"largest |loss difference| over the run {verdict.loss_max_abs_diff:.3g})"
            )
        elif verdict.verdict != "not-comparable":
            lines.append(f"every one of the {verdict.steps_compared} step losses is equal")
        if verdict.first_step_beyond_tolerance is not None:
            lines.append(f"first step beyond the task's tolerance: {verdict.first_step_beyond_tolerance}")
        if verdict.tensor is not None:
            lines.append(
                f"first divergent tensor (largest final difference): {verdict.tensor} "
                f"(abs {verdict.weight_max_abs_diff:.3g}, rel {verdict.weight_max_rel_diff:.3g})"
            )
    folder = Path(outcome.results_dir)
    for role, result in (("run", candidate), ("partner", partner)):
        lines.append(f"{role} result: {result_path(folder, Spec.from_dict(result['spec']))}")
    return head + "\n" + "\n".join(f"  {line}" for line in lines)


class OverheadAssertionError(AssertionError):
    """An adapter's paired per-step overhead is above the budget (or could not be measured); ``record`` has it."""

    def __init__(self, message: str, record: Any = None) -> None:
        super().__init__(message)
        self.record = record


def assert_overhead(
    task: str,
    adapter: str,
    *,
    at_most_us: float | None = None,
    at_most_ratio: float | None = None,
    clock: str = "wall",
    rounds: int = 20,
    steps: int = 60,
    warmup: int = 10,
    threads: int = 1,
    results_dir: str | Path | None = None,
    timeout_s: float = 900.0,
    **fields: Any,
) -> dict[str, Any]:
    """Measure ``adapter``'s per-step overhead over the native loop, paired in one process, and hold it to a budget.

    Fails (:class:`OverheadAssertionError`) unless the upper end of the 95% CI is within the budget:
    ``at_most_us`` µs per step more than native and/or ``at_most_ratio`` × native, by ``clock``
    (``wall``, or ``thread``: the main thread's CPU time, steadier on a shared machine). Passing
    needs the whole CI inside the budget, so a noisy measurement fails rather than passes by luck.
    Returns the ``bakeoff.cost/1`` record. ``fields`` are :func:`make_spec`'s (precision, batch_size,
    options, mode, …); the fit must stay within one epoch of the task's data.
    """
    from harness.cost.paired import Protocol
    from harness.cost.run import check_cells, run_paired
    from harness.spec import SpecError

    if at_most_us is None and at_most_ratio is None:
        raise SpecError("give a budget: at_most_us, at_most_ratio or both")
    if clock not in ("wall", "thread"):
        raise SpecError(f"clock must be 'wall' or 'thread', got {clock!r}")
    spec = make_spec(task, adapter, **{"steps": steps, **fields})
    protocol = Protocol(rounds=rounds, steps=steps, warmup=warmup, threads=threads, sync_fits=0, profile_rounds=0)
    check_cells([spec], protocol)
    folder = Path(results_dir) if results_dir is not None else Path(tempfile.mkdtemp(prefix="bakeoff-overhead-"))
    (record,) = run_paired([spec], protocol, folder, timeout_s=timeout_s, force=True)
    if record["status"] != "ok":
        raise OverheadAssertionError(f"{adapter} on {task}: not measured ({record['status']}: {record.get('error')})",
                                     record)
    summary = record["summary"][clock]
    difference, ratio = summary["difference"], summary["ratio"]
    over = []
    if at_most_us is not None and difference["high"] > at_most_us:
        over.append(f"the CI's upper end {difference['high']:+.1f} µs/step is above the budget of {at_most_us:g} µs")
    if at_most_ratio is not None and ratio["high"] > at_most_ratio:
        over.append(f"the CI's upper end {ratio['high']:.3f}x native is above the budget of {at_most_ratio:g}x")
    if over:
        native = summary["native"]["value"]
        raise OverheadAssertionError(
            f"{adapter} on {task} ({spec.mode} {spec.precision}, batch {spec.batch_size}): "
            f"{clock} overhead {difference['value']:+.1f} µs/step "
            f"[{difference['low']:+.1f}, {difference['high']:+.1f}], "
            f"{ratio['value']:.3f}x native ({native:.1f} µs/step) over {len(record['rounds'])} paired rounds; "
            + "; ".join(over),
            record,
        )
    return record
