"""Compare two result sets for regressions in overhead relative to native.

A shared CI machine's absolute speed changes from run to run, so the gate compares each
adapter's overhead ratio (adapter step time / native step time, both measured in the same
result set) between the baseline and the candidate. A cell regresses when its ratio grew by
more than the threshold and the two ratios' confidence intervals do not overlap.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cells import Cell
from harness.durations import measured_steps_us as steps_after_warmup
from harness.result import ResultError, atomic_write_text, read_result
from harness.stats import mann_whitney, ratio_ci

DEFAULT_THRESHOLD = 0.10


def cell_key(spec: dict[str, Any]) -> Cell:
    """What identifies a benchmark cell across result sets (seed and repeat are pooled)."""
    return Cell.of_spec(spec)


def native_key(key: Cell) -> Cell:
    return key.native


def describe_key(key: Cell) -> str:
    return key.describe()


def measured_steps_us(result: dict[str, Any]) -> list[float]:
    """Per-step durations in µs after the run's warm-up steps."""
    return steps_after_warmup(result["trajectory"]["step_end_ns"], result.get("summary", {}).get("warmup_steps", 0))


def load_results(source: Path) -> list[dict[str, Any]]:
    """Every valid result file in a folder (refusing none silently: bad files raise)."""
    folder = Path(source)
    if not folder.is_dir():
        raise ResultError(f"{folder} is not a folder of result files")
    results = [read_result(path) for path in sorted(folder.glob("*.json"))]
    if not results:
        raise ResultError(f"{folder} holds no result files")
    return results


def group_by_cell(results: list[dict[str, Any]]) -> dict[Cell, list[list[float]]]:
    cells: dict[Cell, list[list[float]]] = defaultdict(list)
    for result in results:
        if result["status"] == "ok":
            cells[cell_key(result["spec"])].append(measured_steps_us(result))
    return cells


@dataclass
class CellComparison:
    cell: str
    baseline_ratio: float
    baseline_ci: tuple[float, float]
    candidate_ratio: float
    candidate_ci: tuple[float, float]
    change: float
    """candidate ratio / baseline ratio."""
    test: dict
    regressed: bool
    repeats: tuple[int, int]


def compare_sets(
    baseline: list[dict[str, Any]], candidate: list[dict[str, Any]], *, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """Compare two sets of result files cell by cell."""
    return compare_cells(
        group_by_cell(baseline),
        group_by_cell(candidate),
        reference_of=native_key,
        describe=describe_key,
        threshold=threshold,
    )


def compare_cells(
    base_cells: dict[Any, list[list[float]]],
    cand_cells: dict[Any, list[list[float]]],
    *,
    reference_of,
    describe,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Overhead ratio (cell / its reference cell) per set, then candidate vs baseline.

    ``*_cells`` map a cell to its per-repeat step times; ``reference_of(cell)`` names the
    native cell it is normalised by (the reference cells themselves are not gated).
    """
    rows: list[CellComparison] = []
    missing = []
    for key in sorted(set(base_cells) | set(cand_cells), key=describe):
        reference = reference_of(key)
        if reference == key:
            continue
        if key not in base_cells or key not in cand_cells:
            missing.append(f"{describe(key)}: only in {'baseline' if key in base_cells else 'candidate'}")
            continue
        if reference not in base_cells or reference not in cand_cells:
            missing.append(f"{describe(key)}: no native run to normalise against")
            continue
        base = ratio_ci(base_cells[key], base_cells[reference])
        cand = ratio_ci(cand_cells[key], cand_cells[reference])
        test = mann_whitney(_normalised(cand_cells, key, reference), _normalised(base_cells, key, reference))
        change = cand.value / base.value
        regressed = change > 1 + threshold and cand.low > base.high and test["verdict"] == "slower"
        rows.append(
            CellComparison(
                describe(key),
                base.value,
                (base.low, base.high),
                cand.value,
                (cand.low, cand.high),
                change,
                test,
                regressed,
                (base.repeats, cand.repeats),
            )
        )
    return {
        "threshold": threshold,
        "cells": [row.__dict__ for row in rows],
        "regressions": [row.cell for row in rows if row.regressed],
        "not_compared": missing,
    }


def _normalised(cells: dict[Any, list[list[float]]], key: Any, reference: Any) -> list[float]:
    """The cell's step times divided by its reference cell's median (unitless)."""
    native = sorted(v for group in cells[reference] for v in group)
    median = native[len(native) // 2]
    return [v / median for group in cells[key] for v in group]


def format_table(comparison: dict[str, Any]) -> str:
    lines = [f"{'cell':52} {'baseline x native':>22} {'candidate x native':>22} {'change':>8}  verdict"]
    for row in comparison["cells"]:
        base = f"{row['baseline_ratio']:.3f} [{row['baseline_ci'][0]:.3f},{row['baseline_ci'][1]:.3f}]"
        cand = f"{row['candidate_ratio']:.3f} [{row['candidate_ci'][0]:.3f},{row['candidate_ci'][1]:.3f}]"
        verdict = "REGRESSED" if row["regressed"] else row["test"]["verdict"]
        lines.append(f"{row['cell'][:52]:52} {base:>22} {cand:>22} {row['change']:>7.3f}x  {verdict}")
    for note in comparison["not_compared"]:
        lines.append(f"not compared: {note}")
    count = len(comparison["regressions"])
    lines.append(
        f"{count} regression(s) beyond {comparison['threshold']:.0%} of the overhead ratio"
        if count
        else f"no regression beyond {comparison['threshold']:.0%} of the overhead ratio"
    )
    return "\n".join(lines)


def write_json(comparison: dict[str, Any], path: Path) -> None:
    atomic_write_text(Path(path), json.dumps(comparison, indent=1) + "\n")
