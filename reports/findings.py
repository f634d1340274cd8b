"""What the report found, written from its own tables: one scoreboard row and one paragraph per adapter.

Nothing here is typed by hand: every sentence is assembled from the derived tables (parity,
per-step cost, defaults, start-up, host syncs, inference), every number carries its interval, and
every figure links to the table it comes from. An adapter that was not measured in some way says
so instead of leaving a gap.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from reports import numbers
from reports.analysis import Column, Table

VERDICT_ORDER = ("bitwise", "close", "diverged", "not-comparable")
PARITY_GROUPS = (
    ("fp32", "aligned fp32", lambda r: r["precision"] == "fp32" and r["world_size"] == 1 and r["grad_accum"] == 1),
    ("bf16", "aligned bf16-mixed",
     lambda r: r["precision"] == "bf16-mixed" and r["world_size"] == 1 and r["grad_accum"] == 1),
    ("fp16", "aligned fp16-mixed",
     lambda r: r["precision"] == "fp16-mixed" and r["world_size"] == 1 and r["grad_accum"] == 1),
    ("ddp", "DDP", lambda r: (r["world_size"] or 1) > 1),
    ("accumulation", "gradient accumulation", lambda r: (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) > 1),
)
INFERENCE_LIBRARY = {"fastai": "fastai", "keras": "keras", "hf": "transformers (Trainer)", "flash": "lightning-flash"}

TITLES = {
    "findings": "Findings",
    "scoreboard": "Scoreboard",
    "claims": "Claims",
    "cost": "Per-step cost",
    "paired": "Paired in-process cost",
    "overhead": "Across processes",
    "scaling": "Width sweep: fixed and per-FLOP cost",
    "syncs": "Host syncs",
    "defaults": "Defaults vs aligned",
    "parity": "Parity",
    "distributed": "DDP and accumulation",
    "coverage": "Sample coverage",
    "repeats": "Repeated runs",
    "precision": "Mixed precision against fp32",
    "inference": "What it infers",
    "runs": "Every run",
    "problems": "Runs that did not finish",
    "plots": "Plots",
    "provenance": "Provenance",
    "cite": "Reproduce and cite",
}
"""Section titles; their anchors are the slugs code-hosting sites give Markdown headings."""


def slug(title: str) -> str:
    """The anchor a code-hosting site gives a Markdown heading (and the HTML gives the same section)."""
    text = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


ANCHOR = {key: slug(title) for key, title in TITLES.items()}
ANCHOR["startup"] = ANCHOR["overhead"]


def link(text: str, anchor: str) -> str:
    """Markdown link to a section of this report (rendered as a link in the HTML too)."""
    return f"[{text}](#{anchor})"


@dataclass
class AdapterSummary:
    adapter: str
    label: str
    style: str | None
    cells: dict[str, str] = field(default_factory=dict)
    """Scoreboard column → short text (inline Markdown, links included)."""
    sentences: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)


def _adapters(frame) -> list[tuple[str, str, str | None]]:
    """(adapter, label with the library version, style) in report order, native first."""
    seen: dict[str, tuple[str, str | None]] = {}
    for row in frame.to_dict(orient="records"):
        name = row["adapter"]
        version = row.get("library_version") if row.get("status") == "ok" else None
        library = str(row.get("library") or "")
        if name in seen and not version:
            continue
        if name == "native":
            label = f"native (torch {version})" if version else "native"
        elif version and library == name.partition("@")[0]:
            label = f"{name} {version}" if "@" not in name else name
        elif version:
            label = f"{name} ({library} {version})"
        else:
            label = name
        if name not in seen or seen[name][0] == name:
            seen[name] = (label, row.get("style"))
    order = sorted(seen, key=lambda a: (a != "native", a.partition("@")[0], a))
    return [(name, seen[name][0], seen[name][1]) for name in order]


def _verdict_counts(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r["verdict"] for r in rows)
    if not counts:
        return ""
    total = sum(counts.values())
    if len(counts) == 1:
        (verdict, count), = counts.items()
        return f"{verdict} {count}/{total}"
    return ", ".join(f"{counts[v]} {v}" for v in VERDICT_ORDER if counts.get(v))


def _unsupported(frame, adapter: str, predicate) -> str | None:
    for row in frame.to_dict(orient="records"):
        if row["adapter"] == adapter and row["status"] == "unsupported" and row["mode"] == "aligned" \
                and predicate({**row, "world_size": row["world_size"] or 1, "grad_accum": row["grad_accum"] or 1}):
            return row.get("error")
    return None


SHORT = {"fp32": "aligned fp32", "bf16": "bf16", "fp16": "fp16", "ddp": "DDP", "accumulation": "accumulation"}


def _parity(summary: AdapterSummary, parity_rows, frame) -> None:
    ours = [r for r in parity_rows if r["adapter"] == summary.adapter and r["mode"] == "aligned"
            and r["role"] in ("declared", "repeat") and r.get("status") != "unsupported"]
    phrases = []
    for key, _title, predicate in PARITY_GROUPS:
        group = [r for r in ours if predicate(r)]
        text = _verdict_counts(group)
        if not text:
            reason = _unsupported(frame, summary.adapter, predicate)
            summary.cells[key] = link("unsupported", ANCHOR["parity"]) if reason else "not run"
            if reason:
                phrases.append(f"{SHORT[key]} unsupported")
            continue
        summary.cells[key] = link(text, ANCHOR["parity"])
        phrases.append(f"{SHORT[key]} {text}")
        for row in group:
            if row.get("finding"):
                summary.findings.append(f"{row['run']}: {row['finding']}")
    if not phrases:
        return
    what = "repeats vs the first repeat" if summary.adapter == "native" else "vs native"
    summary.sentences.append(f"Parity {what}: " + " · ".join(phrases) + f" ({link('parity', ANCHOR['parity'])}).")
    single = [r for r in parity_rows if r["adapter"] == summary.adapter and r["role"] == "single-process"
              and r["mode"] == "aligned" and r.get("status") != "unsupported"]
    if single:
        summary.sentences.append(f"Against one process at the same global batch: {_verdict_counts(single)} "
                                 f"({link('DDP and accumulation', ANCHOR['distributed'])}).")


def _overhead(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    if summary.adapter == "native":
        summary.cells["overhead"] = "reference"
        return
    paired = tables.get("paired")
    rows = [r for r in (paired.rows if paired else []) if r.get("adapter") == summary.adapter
            and r.get("mode") == "aligned" and r.get("overhead_us") is not None]
    if rows:
        row, source, what = rows[0], "paired", "paired in one process"
        value, low, high = row["overhead_us"], row.get("overhead_low"), row.get("overhead_high")
    else:
        scaling = tables.get("scaling")
        rows = [r for r in (scaling.rows if scaling else []) if r["adapter"] == summary.adapter
                and r["mode"] == "aligned" and r["precision"] == "fp32" and r.get("fixed_minus_native_us") is not None]
        if rows:
            row, source, what = rows[0], "scaling", "fixed term of the width sweep"
            value, low, high = row["fixed_minus_native_us"], row.get("fixed_minus_native_low"), \
                row.get("fixed_minus_native_high")
        else:
            rows = [r for r in tables["overhead"].rows if r["adapter"] == summary.adapter and r["mode"] == "aligned"
                    and r["precision"] == "fp32" and (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) == 1
                    and r.get("overhead_us") is not None]
            if not rows:
                summary.cells["overhead"] = "not measured"
                return
            row, source = rows[0], "overhead"
            what = f"{row['task_key']}, separate processes"
            value, low, high = row["overhead_us"], row.get("overhead_low"), row.get("overhead_high")
    summary.cells["overhead"] = link(numbers.compact_ci(value, low, high), ANCHOR[source])
    summary.sentences.append(f"Overhead {link(numbers.signed_ci(value, low, high, 'µs'), ANCHOR[source])} per step "
                             f"({what}).")


def _defaults(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    rows = [r for r in tables["defaults"].rows if r["adapter"] == summary.adapter and r.get("step_cost_us") is not None]
    if summary.adapter == "native":
        summary.cells["defaults"] = "–"
        return
    if not rows:
        summary.cells["defaults"] = "not run"
        return
    # The task where the defaults' cost is known best (narrowest interval), named in the text.
    row = min(rows, key=lambda r: (r.get("step_cost_high") or math.inf) - (r.get("step_cost_low") or -math.inf))
    low, high = row.get("step_cost_low"), row.get("step_cost_high")
    where = row["cell"].split(": ", 1)[-1].split(" ")[0]
    summary.cells["defaults"] = link(numbers.compact_ci(row["step_cost_us"], low, high), ANCHOR["defaults"])
    cost = link(numbers.signed_ci(row["step_cost_us"], low, high, "µs"), ANCHOR["defaults"])
    summary.sentences.append(f"Defaults vs aligned: {cost} per step ({where}).")


PREFERRED_TASKS = ("digits",)


LIBRARY_STARTUP = "Library start-up (import, set-up, first step; torch, data preloaded)"


def _startup_figure(row: dict[str, Any]) -> tuple[str, str] | None:
    """(column, what it is) of a row's start-up: the cold figure where a fresh process measured it, else the
    library's own (its import, set-up and first step in a worker forked with torch already loaded)."""
    if row.get("startup_s") is not None:
        return "startup_s", "Start-up"
    if row.get("library_startup_s") is not None:
        return "library_startup_s", LIBRARY_STARTUP
    return None


def _startup(summary: AdapterSummary, tables: dict[str, Table], native_startup: dict[str, float]) -> None:
    rows = [r for r in tables["overhead"].rows if r["adapter"] == summary.adapter and r["mode"] == "aligned"
            and r["precision"] == "fp32" and (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) == 1
            and _startup_figure(r) is not None]
    if not rows:
        summary.cells["startup"] = "not measured"
        return
    row = next((r for r in rows if r["task_key"] in PREFERRED_TASKS), rows[0])
    column, what = _startup_figure(row)
    text = numbers.with_ci(row[column], row.get(f"{column}_low"), row.get(f"{column}_high"))
    summary.cells["startup"] = link(numbers.sig(row[column]) + ("" if column == "startup_s" else " (library)"),
                                    ANCHOR["overhead"])
    extra = ""
    native = native_startup.get((row["task_key"], column))
    if summary.adapter != "native" and native is not None:
        extra = f", {numbers.signed(row[column] - native, 's')} vs native"
    summary.sentences.append(f"{what} {link(text + ' s', ANCHOR['overhead'])} ({row['task_key']}{extra}).")


def _syncs(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    syncs = tables.get("syncs")
    rows = [r for r in (syncs.rows if syncs else []) if r.get("adapter") == summary.adapter
            and r.get("syncs_per_step") is not None]
    if not rows:
        summary.cells["syncs"] = "not measured"
        return
    parts = [f"{numbers.sig(r['syncs_per_step'])} {r.get('mode')}" for r in rows]
    summary.cells["syncs"] = link(" · ".join(parts), ANCHOR["syncs"])
    worst = max(rows, key=lambda r: r["syncs_per_step"])
    if worst["syncs_per_step"]:
        where = f", e.g. {worst['top_site']}" if worst.get("top_site") else ""
        summary.sentences.append(f"Host syncs per step {link(' · '.join(parts), ANCHOR['syncs'])}{where}.")
    else:
        summary.sentences.append(f"No host sync per step ({link('syncs', ANCHOR['syncs'])}).")


def _infers(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    library = INFERENCE_LIBRARY.get(summary.adapter.partition("@")[0])
    rows = [r for r in tables["inference"].rows if library and r["library"].startswith(library)]
    if not rows:
        summary.cells["infers"] = "–"
        return
    row = rows[-1]
    classes = row["num_classes"].split(":", 1)[0]
    summary.cells["infers"] = link(f"num_classes {classes}", ANCHOR["inference"])
    evidence = link("what it infers", ANCHOR["inference"])
    summary.sentences.append(f"Its user states {row['stated_by_hand']} ({evidence}).")


NOTABLE_COVERAGE = ("duplicate", "ignores the spec seed", "out of range")


def _coverage(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    """A sentence only where coverage is notable (duplicates, an order that ignores the seed); the
    per-adapter lines are the coverage table."""
    table = tables.get("coverage")
    rows = [r for r in (table.rows if table else []) if r["adapter"] == summary.adapter
            and any(word in r["coverage"] for word in NOTABLE_COVERAGE)]
    if rows:
        parts = [f"{r['layout']}: {r['coverage']}" for r in rows[:2]]
        summary.sentences.append(f"Sample coverage ({link('coverage', ANCHOR['coverage'])}): "
                                 + " · ".join(parts) + ".")


def summaries(frame, tables: dict[str, Table]) -> list[AdapterSummary]:
    parity_rows = tables["parity"].rows
    native_startup = {(r["task_key"], column): r[column] for r in tables["overhead"].rows
                      for column in ("startup_s", "library_startup_s")
                      if r["adapter"] == "native" and r["mode"] == "aligned" and r["precision"] == "fp32"
                      and (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) == 1 and r.get(column) is not None}
    out = []
    for adapter, label, style in _adapters(frame):
        summary = AdapterSummary(adapter=adapter, label=label, style=style)
        _parity(summary, parity_rows, frame)
        _overhead(summary, tables)
        _defaults(summary, tables)
        _startup(summary, tables, native_startup)
        _syncs(summary, tables)
        _infers(summary, tables)
        _coverage(summary, tables)
        summary.cells["findings"] = (link(f"{len(summary.findings)} contradicted", ANCHOR["parity"])
                                     if summary.findings else "none")
        if summary.findings:
            summary.sentences.append("**Declared verdicts contradicted**: " + "; ".join(summary.findings) + ".")
        out.append(summary)
    return out


SCOREBOARD_COLUMNS = [
    Column("label", "adapter", numeric=False),
    Column("fp32", "parity fp32", numeric=False, markup=True),
    Column("bf16", "parity bf16", numeric=False, markup=True),
    Column("fp16", "parity fp16", numeric=False, markup=True),
    Column("ddp", "parity DDP", numeric=False, markup=True),
    Column("accumulation", "parity accum.", numeric=False, markup=True),
    Column("overhead", "overhead µs/step (95% CI)", numeric=False, markup=True),
    Column("defaults", "defaults extra µs/step", numeric=False, markup=True),
    Column("startup", "start-up s", numeric=True, markup=True),
    Column("syncs", "host syncs/step", numeric=False, markup=True),
    Column("infers", "infers", numeric=False, markup=True),
    Column("findings", "contradicted", numeric=False, markup=True),
]


def scoreboard(summaries_: list[AdapterSummary]) -> Table:
    rows = [{"label": s.label, "style": s.style or "–", "adapter": s.adapter, **s.cells} for s in summaries_]
    columns = [c for c in SCOREBOARD_COLUMNS
               if c.key == "label" or any(r.get(c.key) not in (None, "not run", "–", "not measured")
                                                      for r in rows)]
    note = ("One row per adapter and library version; each cell is the short form of a detailed table below (follow "
            "its link). Parity counts the adapter's aligned runs by verdict against the native run with the same "
            "configuration. Overhead is the paired in-process measurement where the report has one, else the fixed "
            "term of the width sweep, else one task's difference of medians.")
    return Table("scoreboard", "Scoreboard", columns, rows, note)
