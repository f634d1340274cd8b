"""The cost pass over many cells: one paired worker process per cell, then the other measurements.

``bakeoff cost`` and a suite with ``cost = "paired"`` come here. Passes:

- ``paired``: a fresh process per cell (:mod:`harness.cost.paired`), one after another, so cells
  never share a core; results land as ``paired-<cell_id>.json``. A cell whose file exists with the
  same protocol is skipped (resume), unless ``force``;
- ``imports``: the import-contamination blocks (:mod:`harness.cost.contamination`);
- ``instructions``: one callgrind process per run over every cell (:mod:`harness.cost.instructions`).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.cost import record as cost_record
from harness.cost.paired import arm_specs, cell_description, cell_id, check_epoch
from harness.environment import REPO_ROOT
from harness.plan import check_spec
from harness.process import ORCHESTRATOR_ENV, die_with_parent, orchestrator_token
from harness.spec import Spec, SpecError

PASSES = ("paired", "imports", "instructions")
DEFAULT_PASSES = ("paired", "imports")
STDERR_TAIL = 3000


def cells_of(specs: Sequence[Spec]) -> tuple[list[Spec], list[str]]:
    """The distinct single-process cells of a list of specs (repeats and step counts folded), and skips.

    A DDP spec has no in-process paired form (its ranks are separate processes): it is listed as
    skipped with the reason rather than measured some other way.
    """
    seen: dict[str, Spec] = {}
    skipped = []
    for spec in specs:
        if spec.world_size > 1:
            skipped.append(f"{spec.label}: world size {spec.world_size} runs in several processes (no paired form)")
            continue
        seen.setdefault(cell_id(spec), spec)
    return list(seen.values()), skipped


def _format_interval(summary: dict[str, Any] | None, clock: str) -> str:
    if not summary or not summary.get(clock) or not summary[clock].get("difference"):
        return "-"
    difference = summary[clock]["difference"]
    return f"{difference['value']:+.1f} us/step [{difference['low']:+.1f}, {difference['high']:+.1f}]"


def one_line(record: dict[str, Any]) -> str:
    """A cell's result as one progress line."""
    label = record["cell"]["label"]
    if record["status"] != "ok":
        return f"{label} | {record['status']} | {record['error']}"
    summary = record["summary"]
    native = summary["wall"]["native"]["value"] if summary["wall"].get("native") else float("nan")
    syncs = record.get("syncs", {}).get("adapter", {}).get("per_step")
    placed = record.get("attribution", {}).get("placed_share")
    parts = [
        label,
        f"wall {_format_interval(summary, 'wall')}",
        f"thread {_format_interval(summary, 'thread')}",
        f"native {native:.1f} us/step",
    ]
    if syncs is not None:
        parts.append(f"syncs {syncs:g}/step")
    if placed is not None:
        parts.append(f"profile places {placed:.0%}")
    return " | ".join(parts)


def run_paired(
    cells: Sequence[Spec],
    protocol,
    results_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    timeout_s: float = 1800.0,
    force: bool = False,
    python: str = sys.executable,
) -> list[dict[str, Any]]:
    """Measure every cell in its own worker process, one at a time; return their records."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[ORCHESTRATOR_ENV] = orchestrator_token()
    records = []
    started = time.perf_counter()
    for index, spec in enumerate(cells, start=1):
        path = results_dir / cost_record.file_name("paired", cell_id(spec))
        existing = _existing(path, protocol) if not force else None
        if existing is not None:
            records.append(existing)
            if progress is not None:
                progress(f"[{index}/{len(cells)}] {one_line(existing)} (done earlier)")
            continue
        cell_started, launched_at = time.perf_counter(), time.time()
        with tempfile.TemporaryDirectory(prefix="bakeoff-cost-") as scratch:
            spec_file, protocol_file = Path(scratch) / "spec.json", Path(scratch) / "protocol.json"
            spec_file.write_text(spec.canonical_json())
            protocol_file.write_text(json.dumps(protocol.to_dict()))
            log = Path(scratch) / "worker.log"
            command = [python, "-m", "harness.cost.paired", "--spec", str(spec_file), "--protocol", str(protocol_file)]
            command += ["--out", str(path), "--workroot", str(Path(scratch) / "work")]
            with open(log, "w+b") as output:
                process = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=functools.partial(die_with_parent, os.getpid()),
                )
                try:
                    process.wait(timeout=timeout_s)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait()
                    timed_out = True
                output.seek(0)
                tail = output.read()[-STDERR_TAIL:].decode("utf-8", "replace")
            record = _read_new(path, launched_at)
            if record is None:
                reason = f"timed out after {timeout_s:g} s" if timed_out else f"worker exited with {process.returncode}"
                record = _failure(spec, protocol, f"{reason} without a result", tail)
                cost_record.write(path, record)
        records.append(record)
        if progress is not None:
            elapsed = time.perf_counter() - started
            eta = elapsed / index * (len(cells) - index)
            progress(
                f"[{index}/{len(cells)}] {one_line(record)} ({time.perf_counter() - cell_started:.0f} s, "
                f"about {eta:.0f} s left)"
            )
    return records


def _existing(path: Path, protocol) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = cost_record.read(path)
    except cost_record.CostRecordError:
        return None
    if record.get("protocol") != protocol.to_dict() or record["status"] == "failed":
        return None
    return record


def _read_new(path: Path, launched_at: float) -> dict[str, Any] | None:
    """The record the worker just wrote (an older file from a previous run does not count)."""
    if not path.exists() or path.stat().st_mtime < launched_at - 1:
        return None
    try:
        return cost_record.read(path)
    except cost_record.CostRecordError:
        return None


def _failure(spec: Spec, protocol, error: str, tail: str) -> dict[str, Any]:
    return {
        "schema": cost_record.SCHEMA,
        "kind": "paired",
        "cell_id": cell_id(spec),
        "cell": cell_description(arm_specs(spec, protocol.steps)["adapter"]),
        "status": "failed",
        "error": error,
        "output_tail": tail,
        "protocol": protocol.to_dict(),
        "environment": {},
    }


def check_cells(cells: Sequence[Spec], protocol) -> None:
    """Bad input before anything runs: unknown names, an epoch too short for the steps, no CUDA."""
    if not cells:
        raise SpecError("no cells to measure (every spec was skipped)")
    for spec in cells:
        check_spec(spec)
        check_epoch(spec, protocol.steps)


def parse_passes(text: str) -> tuple[str, ...]:
    passes = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in passes if p not in PASSES]
    if unknown or not passes:
        raise SpecError(f"unknown cost pass {unknown[0] if unknown else text!r}; choose from: {', '.join(PASSES)}")
    return passes
