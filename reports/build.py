"""Build a report from MLflow runs, write it to ``<out>/<report-id>/`` and verify a written one.

The report id is derived from the report's content: the raw run data (run ids, params, tags,
metrics, per-step histories, environments), the task declarations it was judged against and every
derived table. The same runs always give the same id and folder; any changed figure gives a new one.
The folder keeps that raw data (``raw.json``, ``steps.csv``), so ``bakeoff report --verify`` can
recompute every table and the id offline.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.environment import REPO_ROOT
from harness.stats import BOOTSTRAP_SAMPLES
from harness.store import store_kind
from reports import analysis, findings, plots, render, tables
from reports import claims as ledger
from reports import cost as cost_report
from reports.source import RunRecord, Selection, load_cost, load_runs

RAW_SCHEMA = "bakeoff.report-raw/2"
REPORT_SCHEMA = "bakeoff.report/3"


DEFAULT_OUT = REPO_ROOT / "reports" / "out"


def default_out() -> Path:
    """Where reports go: ``$BAKEOFF_REPORTS_OUT`` (read at call time, so tests can redirect it), else DEFAULT_OUT."""
    return Path(os.environ.get("BAKEOFF_REPORTS_OUT") or DEFAULT_OUT)


@dataclass(kw_only=True)
class Report:
    report_id: str
    title: str
    origin: dict[str, Any]
    frame: pd.DataFrame
    records: list[RunRecord]
    tasks: dict[str, Any]
    """The task declarations the runs are judged against (target metric, drift, options), as built."""
    settings: dict[str, Any]
    tables: dict[str, analysis.Table]
    fits: dict
    provenance: dict[str, list[str]]
    reproduce: list[str]
    generated_at: str
    source_line: str
    claims: list[dict[str, Any]] = field(default_factory=list)
    """The claims ledger the report decided (a snapshot: verify decides the same claims offline)."""
    summaries: list = field(default_factory=list)
    """Per adapter: the scoreboard cells and the findings sentences (``reports.findings``)."""
    figures: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    """file name → (caption, PNG bytes)."""
    cost: list[dict[str, Any]] = field(default_factory=list)
    """The paired cost records (``bakeoff.cost/1``, machine paths stripped) the cost tables come from."""

    @property
    def counts_line(self) -> str:
        counts = tables.status_counts(self.frame)
        return f"{len(self.frame)} ({', '.join(f'{n} {s}' for s, n in counts.items())})"

    @property
    def parity_line(self) -> str:
        counts = tables.parity_counts(self.frame)
        return ", ".join(f"{n} {verdict}" for verdict, n in counts.items())

    @property
    def summary_line(self) -> str:
        """The report in one sentence: what ran, where, and what came out."""
        adapters = sorted({str(a) for a in self.frame["adapter"].dropna()} - {"native"})
        hardware = ", ".join(self.provenance.get("hardware", [])) or "an unnamed machine"
        parity = f"; parity verdicts: {self.parity_line}" if self.parity_line else ""
        return (f"{len(self.frame)} runs ({', '.join(f'{n} {s}' for s, n in tables.status_counts(self.frame).items())})"
                f" of the native PyTorch loop and {len(adapters)} training APIs ({', '.join(adapters) or 'none'}) on "
                f"the same tasks, initial weights and batches, measured on {self.measured_on} on {hardware}"
                f"{parity}.")

    @property
    def citation_line(self) -> str:
        return (f"Report `{self.report_id}` from {self.source_line}. Cite it as: {self.citation}; "
                "[reproduce and verify](#reproduce-and-cite).")

    @property
    def measured_on(self) -> str:
        """Date of the newest run (from the data, so it is part of the content, unlike generated_at)."""
        newest = max((r.start_time for r in self.records), default=0)
        return time.strftime("%Y-%m-%d", time.gmtime(newest / 1000)) if newest > 10**9 else "unknown"

    @property
    def suite_name(self) -> str:
        return str(self.origin.get("suite") or self.origin.get("experiment") or "runs")

    @property
    def citation(self) -> str:
        """One line naming exactly these runs: the content-derived id, the code and where they live."""
        shas = self.provenance.get("git_sha", [])
        code = f"git {shas[0][:12]}" if len(shas) == 1 else f"{len(shas)} commits"
        return (f"bakeoff report {self.report_id} ({self.suite_name}, {len(self.frame)} runs, {code}, "
                f"{self.origin.get('experiment')}, measured {self.measured_on})")

    @property
    def bibtex(self) -> str:
        shas = self.provenance.get("git_sha", [])
        year = self.measured_on[:4] if self.measured_on != "unknown" else self.generated_at[:4]
        note = (f"Report id {self.report_id}; {len(self.frame)} runs ({self.counts_line}); "
                f"code {', '.join(s[:12] for s in shas) or 'unknown'}; "
                f"verify with bakeoff report --verify")
        return "\n".join([
            f"@misc{{bakeoff-{self.report_id},",
            f"  title        = {{bakeoff report {self.report_id}: {self.suite_name} suite}},",
            "  author       = {{bakeoff contributors}},",
            f"  year         = {{{year}}},",
            f"  howpublished = {{bakeoff report folder {self.report_id} (MLflow experiment "
            f"{self.origin.get('experiment')})}},",
            f"  note         = {{{note}}},",
            "}",
        ])

    @property
    def citation_cff(self) -> str:
        shas = self.provenance.get("git_sha", [])
        lines = [
            "cff-version: 1.2.0",
            'message: "If you use these measurements, cite this report by its id."',
            "type: dataset",
            f'title: "bakeoff report {self.report_id}: {self.suite_name} suite"',
            f'version: "{self.report_id}"',
            "authors:",
            '  - name: "bakeoff contributors"',
            "identifiers:",
            "  - type: other",
            f'    value: "bakeoff-report:{self.report_id}"',
            '    description: "content-derived report id (SHA-256 of the raw data and tables)"',
        ]
        if self.measured_on != "unknown":
            lines.append(f"date-released: {self.measured_on}")
        if len(shas) == 1:
            lines.append(f'commit: "{shas[0]}"')
        lines.append('keywords: ["benchmark", "pytorch", "training loop overhead", "reproducibility"]')
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        return records(self.frame)

    def raw_document(self) -> dict[str, Any]:
        """Everything the tables are computed from: ``raw.json`` in the report folder."""
        return {
            "schema": RAW_SCHEMA,
            "origin": self.origin,
            "settings": self.settings,
            "tasks": self.tasks,
            "claims": self.claims,
            "runs": [r.to_dict() for r in sorted(self.records, key=lambda r: r.run_id)],
            **({"cost": self.cost} if self.cost else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "report_id": self.report_id,
            "title": self.title,
            "generated_at": self.generated_at,
            "built_with": _builder_version(),
            "measured_on": self.measured_on,
            "source": self.origin,
            "settings": self.settings,
            "status_counts": tables.status_counts(self.frame),
            "parity_counts": tables.parity_counts(self.frame),
            "provenance": self.provenance,
            "reproduce": self.reproduce,
            "citation": self.citation,
            "bibtex": self.bibtex,
            "citation_cff": self.citation_cff,
            "figures": sorted(self.figures),
            "findings": [{"adapter": s.adapter, "label": s.label, "sentences": s.sentences, "findings": s.findings}
                         for s in self.summaries],
            "tables": {name: table.to_dict() for name, table in self.tables.items()},
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


def _builder_version() -> dict[str, Any]:
    """The bakeoff checkout that computed the tables (not part of the id: the same tables from any checkout)."""
    from harness.environment import git_state

    state = git_state()
    return {"git_sha": state.get("git_sha"), "git_dirty": state.get("git_dirty")}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def content_id(
    frame: pd.DataFrame,
    run_records: list[RunRecord] | None = None,
    derived: dict[str, analysis.Table] | None = None,
    tasks: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    claims: list[dict[str, Any]] | None = None,
    cost: list[dict[str, Any]] | None = None,
) -> str:
    """First 12 hex digits of SHA-256 over the canonical JSON of the raw runs, the declarations and every table.

    Not in it: when the report was generated and how the runs were selected (the same runs chosen by
    suite or by invocation run are the same content).
    """
    content = {
        "results": records(frame),
        "runs": [r.to_dict() for r in sorted(run_records or [], key=lambda r: r.run_id)],
        "tables": {name: t.to_dict() for name, t in (derived or {}).items()},
        "tasks": tasks or {},
        "settings": settings or {},
        "claims": claims or [],
        **({"cost": cost} if cost else {}),  # absent without cost records: earlier report ids stand
    }
    return hashlib.sha256(_canonical(json.loads(_canonical(content))).encode()).hexdigest()[:12]


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
    from harness.suites import suite_names

    if suite and suite in suite_names():
        lines.append(f".venv/bin/bakeoff bench --suite {suite} --device {device}")
        lines.append(f".venv/bin/bakeoff report --suite {suite}")
    elif suite and re.fullmatch(r"[A-Za-z0-9_-]+", suite):
        lines.append(f"# suite {suite} is not built in: it came from a suite file (TOML) named {suite}")
        lines.append(f".venv/bin/bakeoff bench --suite-file {suite}.toml --device {device}")
        lines.append(f".venv/bin/bakeoff report --suite {suite}")
    else:
        lines.append("# one spec at a time: .venv/bin/bakeoff run --task ... (see results.csv for every spec)")
    return lines


def task_declarations(names: list[str]) -> dict[str, Any]:
    """What each task declares that the report judges runs by, snapshotted into the raw data."""
    from harness.registry import get_task

    declared = {}
    for name in sorted(set(names)):
        try:
            task = get_task(name)
        except Exception:  # a task this checkout does not know: judged without declarations
            continue
        declared[name] = {
            "target_metric": task.target_metric,
            "metric_name": task.metric_name,
            "higher_is_better": task.higher_is_better,
            "precision_drift": dict(task.precision_drift),
            "options": dict(task.options),
        }
    return declared


def full_provenance(run_records: list[RunRecord], frame: pd.DataFrame, origin: dict[str, Any]) -> dict[str, list[str]]:
    found = tables.provenance(run_records)
    extra: dict[str, set[str]] = {"python": set(), "platform": set(), "hardware": set(), "packages": set()}
    for record in run_records:
        environment = record.environment
        if environment.get("python"):
            extra["python"].add(str(environment["python"]))
        if environment.get("platform"):
            extra["platform"].add(str(environment["platform"]))
        if environment.get("cpu_model"):
            hardware = f"{environment['cpu_model']}, {environment.get('cpu_count')} logical CPUs"
            if environment.get("gpu_count"):
                hardware += f", {environment['gpu_count']} × {environment.get('device_name')}"
                if environment.get("driver"):
                    hardware += f" (driver {environment['driver']})"
            extra["hardware"].add(hardware)
        for package, version in (environment.get("packages") or {}).items():
            if version:
                extra["packages"].add(f"{package} {version}")
    found.update({name: sorted(values) for name, values in extra.items()})
    found["machine_load"] = _load_line(run_records)
    found["seeds"] = sorted({str(int(s)) for s in frame["seed"].dropna()}, key=int)
    found["suite"] = [str(origin["suite"])] if origin.get("suite") else []
    found["experiment"] = [str(origin.get("experiment"))] if origin.get("experiment") else []
    found["spec_ids"] = [f"{frame['spec_id'].nunique()} specs (every id in results.csv)"]
    found["mlflow_runs"] = [f"{frame['run_id'].nunique()} runs (every id in results.csv and raw.json)"]
    return found


def _load_line(run_records: list[RunRecord]) -> list[str]:
    """How busy the machine was: the 1-minute load average at the end of each run, summarised."""
    loads = sorted(float(r.environment["load_average"][0]) for r in run_records
                   if isinstance(r.environment.get("load_average"), list) and r.environment["load_average"])
    if not loads:
        return []
    cores = sorted({int(r.environment["cpu_count"]) for r in run_records if r.environment.get("cpu_count")})
    median = loads[len(loads) // 2] if len(loads) % 2 else (loads[len(loads) // 2 - 1] + loads[len(loads) // 2]) / 2
    return [f"1-minute load average at the end of each run (the run's own threads included): min {loads[0]:.2f}, "
            f"median {median:.2f}, max {loads[-1]:.2f} over {len(loads)} runs; "
            f"{'/'.join(str(c) for c in cores) or '?'} logical CPUs"]


def _slug(index: int, text: str) -> str:
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


def _figures(report: Report) -> dict[str, tuple[str, bytes]]:
    frame, selected = report.frame, report.records
    losses = tables.step_series(selected, "loss")
    step_times = tables.step_series(selected, "step_time_us")
    valid = tables.step_series(selected, "valid_metric")
    warmup = {r.run_id: int(r.metrics.get("warmup_steps", 0)) for r in selected}
    figures = {}
    overhead_rows = report.tables["overhead"].rows
    task_keys = list(dict.fromkeys(tables.task_key(row) for _, row in frame.iterrows()))
    for index, task in enumerate(task_keys):
        slug = _slug(index, task)
        png = plots.loss_curves(frame, losses, task)
        if png:
            figures[f"loss-{slug}.png"] = (f"{task}: training loss per step", png)
        png = plots.step_time_distributions(frame, step_times, task, warmup)
        if png:
            caption = f"{task}: step-time distribution after warm-up (boxes: quartiles; whiskers: 1.5 IQR)"
            figures[f"steptime-{slug}.png"] = (caption, png)
        png = plots.overhead_bars(overhead_rows, task)
        if png:
            figures[f"overhead-{slug}.png"] = (f"{task}: step time ÷ native with 95% CI", png)
        declared = report.tasks.get(task.partition("[")[0], {})
        if declared.get("target_metric") is not None:
            metric = declared.get("metric_name") or "metric"
            png = plots.target_curves(frame, valid, step_times, task, declared["target_metric"], metric)
            if png:
                figures[f"target-{slug}.png"] = (f"{task}: validation {metric} against training time, "
                                                 f"target {declared['target_metric']:g}", png)
    png = cost_report.attribution_plot(report.cost) if report.cost else None
    if png:
        figures["attribution-paired.png"] = ("paired cost: where each adapter's extra µs per step go (call-site "
                                             "folders; hatched: not placed by the profile)", png)
    png = plots.scaling_fit(report.fits)
    if png:
        figures["scaling-fit.png"] = ("scaling: fixed per-step overhead + compute, fitted per adapter", png)
    return figures


def assemble(
    run_records: list[RunRecord],
    origin: dict[str, Any],
    *,
    tasks: dict[str, Any] | None = None,
    claims: list[dict[str, Any]] | None = None,
    cost: list[dict[str, Any]] | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    generated_at: str | None = None,
    with_figures: bool = True,
) -> Report:
    """The whole report from run records (and paired cost records): a pure function of its inputs
    (bootstraps are seeded)."""
    frame = tables.runs_table(run_records)
    tasks = task_declarations([str(t) for t in frame["task"].dropna()]) if tasks is None else tasks
    claims = ledger.load() if claims is None else claims
    settings = {"bootstrap_samples": samples, "confidence": 0.95, "bootstrap_seed": 0}
    derived, fits, _ = analysis.analyse(frame, run_records, tasks, samples=samples)
    cost = cost_report.publishable_records(cost or [])
    if cost:
        derived.update(analysis.cost_tables(cost))
    summaries = findings.summaries(frame, derived)
    derived["scoreboard"] = findings.scoreboard(summaries)
    derived["claims"] = ledger.claims_table(claims, derived, frame)
    provenance = full_provenance(run_records, frame, origin)
    suite = origin.get("suite")
    source = f"the {origin.get('store', 'MLflow store')}, experiment {origin.get('experiment')}"
    if origin.get("parent_run_id"):
        source += f", invocation run {origin['parent_run_id']}"
    elif origin.get("run_ids"):
        source += f", {len(origin['run_ids'])} runs of one bench invocation"
    else:
        source += " (newest run per spec)"
    if origin.get("rebuilt_from"):
        rebuilt = origin["rebuilt_from"]
        source += (f"; rebuilt from report {rebuilt.get('report_id')}'s raw data with "
                   f"{rebuilt.get('cost_records_replaced')} cost records measured again")
    report_id = content_id(frame, run_records, derived, tasks, settings, claims, cost)
    report = Report(
        report_id=report_id,
        title=f"bakeoff report: {suite or origin.get('experiment')}",
        origin=origin,
        frame=frame,
        records=list(run_records),
        tasks=tasks,
        settings=settings,
        tables=derived,
        fits=fits,
        provenance=provenance,
        reproduce=[*reproduce_commands(frame, provenance, suite),
                   f".venv/bin/bakeoff report --verify reports/out/{report_id}   # re-check this report offline"],
        generated_at=generated_at or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        source_line=source,
        claims=claims,
        summaries=summaries,
        cost=cost,
    )
    if with_figures:
        report.figures = _figures(report)
    return report


def build_report(uri: str, selection: Selection, *, samples: int = BOOTSTRAP_SAMPLES) -> Report:
    selected, origin = load_runs(uri, selection)
    cost = load_cost(uri, origin)
    origin = {**origin, "store": store_kind(uri)}
    if selection.run_ids:
        origin["run_ids"] = list(selection.run_ids)
    return assemble(selected, origin, cost=cost, samples=samples)


def steps_csv(report: Report) -> str:
    """Raw per-step data of every run: run id, spec id, step, loss, step time (µs)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run_id", "spec_id", "step", "loss", "step_time_us"])
    for record in sorted(report.records, key=lambda r: r.run_id):
        losses = dict(record.histories.get("loss", []))
        times = dict(record.histories.get("step_time_us", []))
        for step in sorted(set(losses) | set(times)):
            writer.writerow([record.run_id, record.tag("spec_id"), step,
                             repr(losses[step]) if step in losses else "",
                             repr(times[step]) if step in times else ""])
    return buffer.getvalue()


def write_report(report: Report, out_root: Path | None = None) -> Path:
    folder = Path(out_root if out_root is not None else default_out()) / report.report_id
    raw = json.dumps(report.raw_document(), indent=1, sort_keys=True, allow_nan=False) + "\n"
    render.write_all(report, folder, extra={"raw.json": raw, "steps.csv": steps_csv(report)})
    return folder


# --------------------------------------------------------------------------- verify


def _first_difference(saved: Any, rebuilt: Any, where: str) -> str | None:
    if isinstance(saved, dict) and isinstance(rebuilt, dict):
        for key in sorted(set(saved) | set(rebuilt)):
            if key not in saved or key not in rebuilt:
                return f"{where}.{key}: only in the {'rebuilt' if key not in saved else 'saved'} report"
            found = _first_difference(saved[key], rebuilt[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(rebuilt, list):
        if len(saved) != len(rebuilt):
            return f"{where}: {len(saved)} entries saved, {len(rebuilt)} recomputed"
        for index, (a, b) in enumerate(zip(saved, rebuilt)):
            found = _first_difference(a, b, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if saved == rebuilt else f"{where}: saved {saved!r}, recomputed {rebuilt!r}"


def _read_written(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A written report's ``raw.json`` and ``report.json``; ValueError with one line when unreadable."""
    try:
        raw = json.loads((folder / "raw.json").read_text(encoding="utf-8"))
        saved = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the report's raw data: {error}") from None
    if raw.get("schema") != RAW_SCHEMA:
        raise ValueError(f"raw.json schema {raw.get('schema')!r} is not {RAW_SCHEMA!r}")
    return raw, saved


def _from_raw(raw: dict[str, Any], *, origin: dict[str, Any] | None = None, cost: list[dict[str, Any]] | None = None,
              generated_at: str | None = None, with_figures: bool = False) -> Report:
    run_records = [RunRecord.from_dict(r) for r in raw["runs"]]
    return assemble(run_records, raw["origin"] if origin is None else origin, tasks=raw["tasks"],
                    claims=raw.get("claims", []), cost=raw.get("cost") if cost is None else cost,
                    samples=int(raw["settings"]["bootstrap_samples"]),
                    generated_at=generated_at, with_figures=with_figures)


def rebuild_report(folder: Path, cost: list[dict[str, Any]]) -> Report:
    """A new report from a written report's raw data, its cost records replaced by ``cost`` where they
    measured the same thing (kind and cell or library; the others stay): for cost measured again
    after the runs, whose store may be gone. Reads no tracking store; the source line says so."""
    from harness.cost.record import key_of

    raw, saved = _read_written(Path(folder))
    replaced = {key_of(record) for record in cost}
    kept = [record for record in raw.get("cost") or [] if key_of(record) not in replaced]
    origin = {**raw["origin"], "rebuilt_from": {"report_id": saved.get("report_id"),
                                                 "cost_records_replaced": len(replaced)}}
    try:
        return _from_raw(raw, origin=origin, cost=kept + list(cost), with_figures=True)
    except (KeyError, TypeError) as error:
        raise ValueError(f"raw.json cannot be rebuilt into a report ({type(error).__name__}: {error})") from None


def verify_report(folder: Path) -> tuple[str | None, list[str]]:
    """Recompute a written report from its ``raw.json``: (report id, problems); no problems means it matches."""
    folder = Path(folder)
    try:
        raw, saved = _read_written(folder)
    except ValueError as error:
        saved_id = None
        with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError):
            saved_id = json.loads((folder / "report.json").read_text(encoding="utf-8")).get("report_id")
        return saved_id, [str(error)]
    try:
        rebuilt = _from_raw(raw, generated_at=saved.get("generated_at"))
    except (KeyError, TypeError, ValueError) as error:
        return saved.get("report_id"), [f"raw.json cannot be rebuilt into a report ({type(error).__name__}: {error})"]
    problems = []
    if rebuilt.report_id != saved.get("report_id"):
        problems.append(f"report id: saved {saved.get('report_id')}, recomputed from raw.json {rebuilt.report_id} "
                        "(the raw data or the code computing the tables changed)")
    # Plots are not recomputed (their pixels depend on matplotlib's version): the HTML is re-rendered
    # around the saved images, whose digests the manifest below checks.
    rebuilt.figures = {name: (caption, (folder / name).read_bytes() if (folder / name).is_file() else b"")
                       for name, caption in _saved_captions(folder, saved)}
    document = json.loads(render.json_text(rebuilt))
    # Every key of report.json but when and by which checkout it was written (and the file list, checked below).
    for key in sorted((set(saved) | set(document)) - {"generated_at", "built_with", "files"}):
        difference = _first_difference(saved.get(key), document.get(key), key)
        if difference:
            problems.append(difference)
    for name in saved.get("figures", []):
        if not (folder / name).is_file():
            problems.append(f"figure {name} is missing")
    for name, text in (("results.csv", render.csv_text(rebuilt)), ("steps.csv", steps_csv(rebuilt)),
                       ("report.md", render.markdown(rebuilt)), ("report.html", render.html_page(rebuilt))):
        path = folder / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name} differs from the one recomputed from raw.json{_line_hint(path.read_text(), text)}")
    problems += _manifest_problems(folder, saved.get("files"))
    built, now = saved.get("built_with", {}), _builder_version()
    if problems and built.get("git_sha") and built.get("git_sha") != now.get("git_sha"):
        problems.append(f"note: the report was built by bakeoff at {built['git_sha'][:12]}, this checkout is "
                        f"{str(now.get('git_sha'))[:12]}; if the table code changed since, verify from that commit")
    return saved.get("report_id"), problems


def _manifest_problems(folder: Path, files: dict[str, str] | None) -> list[str]:
    """Every file of the folder against the digests ``report.json`` lists (reports without a list: none)."""
    if files is None:
        return []
    problems = []
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif render.file_digest(path) != digest:
            problems.append(f"{name} was changed after the report was written (its SHA-256 is not the one "
                            "report.json lists)")
    unlisted = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in files
                      and p.name != "report.json")
    problems += [f"{name} is not part of the report (report.json does not list it)" for name in unlisted]
    return problems


def _saved_captions(folder: Path, saved: dict[str, Any]) -> list[tuple[str, str]]:
    """Figure names and captions as the saved Markdown lists them (plots are not recomputed)."""
    markdown = (folder / "report.md").read_text(encoding="utf-8") if (folder / "report.md").exists() else ""
    names = set(saved.get("figures", []))
    listed = re.findall(r"^!\[(.*)\]\(([^)\s]+)\)$", markdown, re.M)
    return [(name, caption) for caption, name in listed if name in names]


def _line_hint(saved: str, rebuilt: str) -> str:
    for number, (a, b) in enumerate(zip(saved.splitlines(), rebuilt.splitlines()), start=1):
        if a != b:
            return f" (first at line {number}: {a[:120]!r})"
    return " (different length)"
