"""Build a report from MLflow runs and write it to ``reports/out/<report-id>/``.

The report id is derived from the report's content (its table, run ids included), so the same
runs always give the same id and folder, and a changed figure gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from harness.environment import REPO_ROOT
from harness.tracking import redact, secret_values
from reports import plots, render, tables
from reports.source import RunRecord, Selection, load_runs

DEFAULT_OUT = REPO_ROOT / "reports" / "out"


@dataclass(kw_only=True)
class Report:
    report_id: str
    title: str
    origin: dict[str, Any]
    frame: pd.DataFrame
    provenance: dict[str, list[str]]
    reproduce: list[str]
    generated_at: str
    source_line: str
    figures: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """file name → (caption, PNG bytes)."""

    @property
    def counts_line(self) -> str:
        counts = tables.status_counts(self.frame)
        return f"{len(self.frame)} ({', '.join(f'{n} {s}' for s, n in counts.items())})"

    @property
    def parity_line(self) -> str:
        counts = tables.parity_counts(self.frame)
        return ", ".join(f"{n} {verdict}" for verdict, n in counts.items())

    @property
    def citation(self) -> str:
        """One line naming exactly these runs: the content-derived id, the code and where they live."""
        shas = self.provenance.get("git_sha", [])
        code = f"git {shas[0][:12]}" if len(shas) == 1 else f"{len(shas)} commits"
        return (f"bakeoff report {self.report_id} ({self.title.removeprefix('bakeoff report: ')}, "
                f"{len(self.frame)} runs, {code}, {self.origin.get('experiment')}), generated {self.generated_at}")

    def rows(self) -> list[dict[str, Any]]:
        return records(self.frame)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "bakeoff.report/1",
            "report_id": self.report_id,
            "title": self.title,
            "generated_at": self.generated_at,
            "source": self.origin,
            "status_counts": tables.status_counts(self.frame),
            "parity_counts": tables.parity_counts(self.frame),
            "provenance": self.provenance,
            "reproduce": self.reproduce,
            "citation": self.citation,
            "figures": sorted(self.figures),
            "rows": self.rows(),
        }


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as JSON-ready dicts (NaN and <NA> become null, numpy scalars plain numbers)."""
    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                clean[key] = None
            elif hasattr(value, "item"):
                clean[key] = value.item()
            else:
                clean[key] = value
        out.append(clean)
    return out


def content_id(frame: pd.DataFrame) -> str:
    """First 12 hex digits of SHA-256 over the table's canonical JSON."""
    text = json.dumps(records(frame), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def public_uri(uri: str) -> str:
    """The tracking URI without credentials (``http://user:token@host`` → ``http://host``)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        uri = urlunsplit(parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else "")))
    return redact(uri, secret_values())


def reproduce_commands(frame: pd.DataFrame, provenance: dict[str, list[str]], suite: str | None) -> list[str]:
    lines = []
    shas = provenance.get("git_sha", [])
    if len(shas) == 1:
        lines.append(f"git checkout {shas[0]}")
    elif shas:
        lines.append(f"# runs came from {len(shas)} commits: {', '.join(shas)}")
    if "true" in provenance.get("git_dirty", []):
        lines.append("# some runs came from a tree with uncommitted changes: the commit alone may not reproduce them")
    lines.append("make install")
    devices = sorted({str(d) for d in frame["device"].dropna()})
    device = devices[0] if len(devices) == 1 else "auto"
    if suite and re.fullmatch(r"[A-Za-z0-9_-]+", suite):
        lines.append(f".venv/bin/bakeoff bench --suite {suite} --device {device}")
        lines.append(f".venv/bin/bakeoff report --suite {suite}")
    else:
        lines.append("# one spec at a time: .venv/bin/bakeoff run --task ... (see results.csv for every spec)")
    return lines


def _figures(frame: pd.DataFrame, selected: list[RunRecord]) -> dict[str, tuple[str, bytes]]:
    losses = tables.step_series(selected, "loss")
    step_times = tables.step_series(selected, "step_time_us")
    warmup = {r.run_id: int(r.metrics.get("warmup_steps", 0)) for r in selected}
    figures = {}
    task_keys = list(dict.fromkeys(tables.task_key(row) for _, row in frame.iterrows()))
    for index, task in enumerate(task_keys):
        slug = f"{index:02d}-" + re.sub(r"[^A-Za-z0-9]+", "-", task).strip("-")
        png = plots.loss_curves(frame, losses, task)
        if png:
            figures[f"loss-{slug}.png"] = (f"{task}: training loss per step", png)
        png = plots.step_time_distributions(frame, step_times, task, warmup)
        if png:
            figures[f"steptime-{slug}.png"] = (f"{task}: step-time distribution after warm-up", png)
    return figures


def build_report(uri: str, selection: Selection) -> Report:
    selected, origin = load_runs(uri, selection)
    frame = tables.runs_table(selected)
    provenance = tables.provenance(selected)
    suite = origin.get("suite")
    origin = {**origin, "tracking_uri": public_uri(uri)}
    source = f"MLflow {origin['tracking_uri']}, experiment {origin.get('experiment')}"
    if origin.get("parent_run_id"):
        source += f", invocation run {origin['parent_run_id']}"
    else:
        source += " (newest run per spec)"
    return Report(
        report_id=content_id(frame),
        title=f"bakeoff report: {suite or origin.get('experiment')}",
        origin=origin,
        frame=frame,
        provenance=provenance,
        reproduce=reproduce_commands(frame, provenance, suite),
        generated_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        source_line=source,
        figures=_figures(frame, selected),
    )


def write_report(report: Report, out_root: Path = DEFAULT_OUT) -> Path:
    folder = Path(out_root) / report.report_id
    render.write_all(report, folder)
    return folder
