"""``bakeoff cost``: which cells, which protocol, which passes — checked before anything runs.

Protocol values come from the defaults, then a suite's ``[cost_protocol]`` table, then the
command-line flags. Bad input raises SpecError (one line, exit 2) before any process starts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from harness.cost import contamination as contamination_pass
from harness.cost import instructions as instruction_pass
from harness.cost.analysis import worse_arm
from harness.cost.contamination import ContaminationProtocol
from harness.cost.instructions import InstructionProtocol
from harness.cost.paired import Protocol, cell_id
from harness.cost.run import DEFAULT_PASSES, cells_of, check_cells, parse_passes, run_paired
from harness.plan import best_device
from harness.registry import RegistryError, get_adapter, get_task
from harness.spec import MODES, Spec, SpecError
from harness.suites import _ordered_adapters, get_suite, load_suite_file

DEFAULT_RESULTS = Path("results") / "cost"
FLAG_FIELDS = {
    "rounds": "rounds",
    "steps": "steps",
    "warmup": "warmup",
    "threads": "threads",
    "warm_rounds": "warm_rounds",
    "sync_fits": "sync_fits",
    "profile_rounds": "profile_rounds",
}


@dataclass
class CostPlan:
    cells: list[Spec]
    skipped: list[str]
    passes: tuple[str, ...]
    protocol: Any
    contamination: Any
    instructions: Any
    results_dir: Path
    timeout_s: float
    force: bool
    dry_run: bool
    source: str
    suite_name: str | None = None
    """The suite the cells came from (None: the default cells); names the MLflow experiment."""

    def run(self, say: Callable[[str], None]) -> int:
        say(
            f"cost: {len(self.cells)} cells from {self.source}, passes {', '.join(self.passes)}, "
            f"results in {self.results_dir}"
        )
        say(f"  paired protocol: {_describe(self.protocol)}")
        if "imports" in self.passes:
            say(f"  imports protocol: {_describe(self.contamination)}")
        if "instructions" in self.passes:
            say(f"  instructions protocol: {_describe(self.instructions)}")
        for line in self.skipped:
            say(f"  skipped: {line}")
        if self.dry_run:
            for spec in self.cells:
                say(f"  {cell_id(spec)}  {spec.label}")
            return 0
        started = time.perf_counter()
        failed = 0
        if "paired" in self.passes:
            say("paired pass: one process per cell, native and adapter alternating")
            records = run_paired(
                self.cells, self.protocol, self.results_dir, progress=say, timeout_s=self.timeout_s, force=self.force
            )
            failed += sum(record["status"] == "failed" for record in records)
        if "imports" in self.passes:
            adapters = sorted({spec.adapter for spec in self.cells if spec.adapter != "native"})
            say(f"imports pass: native loop in clean vs library-imported processes ({_describe(self.contamination)})")
            base = self.cells[0]
            records = contamination_pass.measure(
                adapters, base, self.contamination, self.results_dir, progress=lambda line: say(f"  {line}")
            )
            for record in records:
                say(f"  {_contamination_line(record)}")
            failed += sum(record["status"] == "failed" for record in records)
        if "instructions" in self.passes:
            say(
                f"instructions pass: {self.instructions.runs} callgrind processes over every cell "
                f"({_describe(self.instructions)})"
            )
            records = instruction_pass.measure(
                self.cells, self.instructions, self.results_dir, progress=lambda line: say(f"  {line}")
            )
            for record in records:
                say(f"  {_instruction_line(record)}")
            failed += sum(record["status"] == "failed" for record in records)
        say(f"cost: done in {time.perf_counter() - started:.0f} s, {failed} failed; records in {self.results_dir}")
        return 0 if failed == 0 else 1


def _describe(protocol) -> str:
    return ", ".join(f"{item.name}={getattr(protocol, item.name)}" for item in fields(protocol))


def _contamination_line(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return f"{record['library']}: {record['status']}: {record['error']}"
    wall, thread = record["summary"]["wall"]["difference"], record["summary"]["thread"]["difference"]
    return (
        f"{record['library']} imported: native {wall['value']:+.1f} us/step [{wall['low']:+.1f}, {wall['high']:+.1f}] "
        f"wall, {thread['value']:+.1f} [{thread['low']:+.1f}, {thread['high']:+.1f}] thread vs clean"
    )


def _instruction_line(record: dict[str, Any]) -> str:
    label = record["cell"]["label"]
    if record["status"] != "ok":
        return f"{label}: {record['status']}: {record['error']}"
    summary = record["summary"]
    text = (
        f"{label}: native {summary['native_per_step']:,.0f} instr/step, adapter {summary['adapter_per_step']:,.0f}, "
        f"difference {summary['difference_per_step']:+,.0f}"
    )
    spread = worse_arm(summary["repeatability"])
    if spread is not None:
        text += f", runs agree to {spread:.4%}"
    layouts = summary.get("layout_spread")
    if layouts:
        worst = worse_arm(layouts)
        text += f"; mean of {len(layouts['layouts'])} heap layouts"
        if worst is not None:
            text += f", which spread {worst:.4%} per arm"
        if layouts["difference"] is not None:
            text += f", {layouts['difference']:.4%} on the difference"
    return text


def _protocol_values(cls, table: dict[str, Any], flags: dict[str, Any], where: str):
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(known))})")
    values = {**table, **{key: value for key, value in flags.items() if value is not None}}
    return cls(**values)


def default_cells(args: argparse.Namespace, device: str) -> list[Spec]:
    try:
        task = get_task(args.task)
    except RegistryError as error:
        raise SpecError(str(error)) from None
    options = dict(args.option) if args.option else ({"width": 64} if args.task == "scaling" else {})
    adapters = (
        [name.strip() for name in args.adapters.split(",") if name.strip()]
        if args.adapters
        else _ordered_adapters(include_isolated=False)
    )
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise SpecError(f"unknown mode {unknown[0] if unknown else args.modes!r}; choose from: {', '.join(MODES)}")
    cells = []
    for name in adapters:
        try:
            adapter = get_adapter(name)
        except RegistryError as error:
            raise SpecError(str(error)) from None
        if adapter.environment is not None:
            raise SpecError(f"adapter {name!r} runs in an isolated environment; the paired pass runs in-process")
        for mode in modes if name != "native" else ["aligned"]:
            if mode not in adapter.modes:
                continue
            cells.append(
                Spec(
                    task=args.task,
                    adapter=name,
                    mode=mode,
                    precision=args.precision,
                    batch_size=args.batch_size,
                    steps=task.defaults.steps,
                    lr=task.defaults.lr,
                    options=options,
                    device=device,
                )
            )
    if not args.no_aa and not any(spec.adapter == "native" for spec in cells) and cells:
        cells.insert(0, replace(cells[0], adapter="native", mode="aligned"))
    if args.no_aa:
        cells = [spec for spec in cells if spec.adapter != "native"]
    return cells


def plan_from_args(args: argparse.Namespace) -> CostPlan:
    """The plan ``bakeoff cost`` runs: the default cells or a suite's, with flags over the suite's table."""
    device = args.device
    if device == "auto":
        device = best_device()
    if device not in ("cpu", "cuda"):
        raise SpecError(f"unknown device {device!r}; choose one of: cpu, cuda, auto")
    suite = None
    if args.suite or args.suite_file:
        suite = load_suite_file(args.suite_file, device) if args.suite_file else get_suite(args.suite, device)
    flags = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items()}
    flags.update(
        import_blocks=args.import_blocks,
        instruction_runs=args.instruction_runs,
        instruction_layouts=args.instruction_layouts,
        instruction_rounds=args.instruction_rounds,
        instruction_steps=args.instruction_steps,
        instruction_warmup=args.instruction_warmup,
    )
    return build_plan(
        suite=suite,
        default=None if suite is not None else default_cells(args, device),
        source=f"{args.task} batch {args.batch_size} (default cells)" if suite is None else None,
        passes=args.passes,
        flags=flags,
        no_aa=args.no_aa,
        device=device,
        results_dir=args.results_dir or (DEFAULT_RESULTS if suite is None else Path("results") / suite.name / "cost"),
        timeout_s=args.timeout,
        force=args.force,
        dry_run=args.dry_run,
    )


def plan_for_suite(suite, results_dir: Path, device: str) -> CostPlan:
    """The cost pass ``bench`` runs after a suite with ``cost = "paired"``: its cells, its protocol table."""
    return build_plan(
        suite=suite,
        default=None,
        source=None,
        passes=None,
        flags={},
        no_aa=False,
        device=device,
        results_dir=results_dir,
        timeout_s=1800.0,
        force=False,
        dry_run=False,
    )


def build_plan(
    *,
    suite,
    default: list[Spec] | None,
    source: str | None,
    passes: str | None,
    flags: dict[str, Any],
    no_aa: bool,
    device: str,
    results_dir: Path,
    timeout_s: float,
    force: bool,
    dry_run: bool,
) -> CostPlan:
    table: dict[str, Any] = {}
    skipped: list[str] = []
    if suite is not None:
        cells, skipped = cells_of(suite.specs)
        table = dict(getattr(suite, "cost_protocol", {}) or {})
        source = f"suite {suite.name}"
    else:
        cells = list(default or [])
    if no_aa:
        cells = [spec for spec in cells if spec.adapter != "native"]
    listed = table.pop("passes", None)
    if listed is not None and not (
        isinstance(listed, str) or (isinstance(listed, list) and all(isinstance(p, str) for p in listed))
    ):
        raise SpecError(f"[cost_protocol] passes must be a list of pass names, got {listed!r}")
    if isinstance(listed, str):
        listed = [listed]
    chosen = parse_passes(passes) if passes else parse_passes(",".join(listed or DEFAULT_PASSES))
    imports_table, instructions_table = table.pop("imports", {}), table.pop("instructions", {})
    for name, value in (("imports", imports_table), ("instructions", instructions_table)):
        if not isinstance(value, dict):
            raise SpecError(f"[cost_protocol.{name}] must be a table")
    protocol = _protocol_values(Protocol, table, {k: flags.get(k) for k in FLAG_FIELDS.values()}, "[cost_protocol]")
    contamination = _protocol_values(
        ContaminationProtocol,
        {"steps": protocol.steps, "warmup": protocol.warmup, "threads": protocol.threads, **imports_table},
        {"blocks": flags.get("import_blocks")},
        "[cost_protocol.imports]",
    )
    instructions = _protocol_values(
        InstructionProtocol,
        {"threads": protocol.threads, **instructions_table},
        {
            "runs": flags.get("instruction_runs"),
            "layouts": flags.get("instruction_layouts"),
            "rounds": flags.get("instruction_rounds"),
            "steps": flags.get("instruction_steps"),
            "warmup": flags.get("instruction_warmup"),
        },
        "[cost_protocol.instructions]",
    )
    check_cells(cells, protocol)
    if "instructions" in chosen and device != "cpu":
        raise SpecError("the instructions pass counts CPU instructions: run it with --device cpu")
    return CostPlan(
        cells=cells,
        skipped=skipped,
        passes=chosen,
        protocol=protocol,
        contamination=contamination,
        instructions=instructions,
        results_dir=Path(results_dir),
        timeout_s=timeout_s,
        force=force,
        dry_run=dry_run,
        source=source or "cells",
        suite_name=suite.name if suite is not None else None,
    )
