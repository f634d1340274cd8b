"""What the report found, written from its own tables: one scoreboard row and one paragraph per adapter.

Nothing here is typed by hand: every sentence is assembled from the derived tables (parity,
per-step cost, defaults, start-up, host syncs, inference), every number carries its interval, and
every figure links to the table it comes from. An adapter that was not measured in some way says
so instead of leaving a gap.
"""

from __future__ import annotations

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
        library = row.get("library")
        if name not in seen or (version and seen[name][0] == name):
            if name == "native":
                label = f"native (torch {version})" if version else "native"
            else:
                label = f"{name} ({library} {version})" if version and library else name
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
        return f"{verdict} ({count}/{total})"
    return ", ".join(f"{counts[v]} {v}" for v in VERDICT_ORDER if counts.get(v))


def _unsupported(frame, adapter: str, predicate) -> str | None:
    for row in frame.to_dict(orient="records"):
        if row["adapter"] == adapter and row["status"] == "unsupported" and row["mode"] == "aligned" \
                and predicate({**row, "world_size": row["world_size"] or 1, "grad_accum": row["grad_accum"] or 1}):
            return row.get("error")
    return None


def _parity(summary: AdapterSummary, parity_rows, frame) -> None:
    ours = [r for r in parity_rows if r["adapter"] == summary.adapter and r["mode"] == "aligned"
            and r["role"] in ("declared", "repeat")]
    phrases = []
    for key, title, predicate in PARITY_GROUPS:
        group = [r for r in ours if predicate(r)]
        text = _verdict_counts(group)
        if not text:
            reason = _unsupported(frame, summary.adapter, predicate)
            summary.cells[key] = link("unsupported", ANCHOR["parity"]) if reason else "not run"
            if reason:
                phrases.append(f"{title}: unsupported ({reason.rstrip('.')})")
            continue
        summary.cells[key] = link(text, ANCHOR["parity"])
        phrases.append(f"{title}: {text}")
        for row in group:
            if row.get("finding"):
                summary.findings.append(f"{row['run']} {row['finding']} against {row['against']}")
    if summary.adapter == "native":
        if phrases:
            summary.sentences.append("Reproducibility of the reference itself (repeats against the first repeat): "
                                     + "; ".join(phrases) + f" ({link('parity', ANCHOR['parity'])}).")
        return
    if phrases:
        summary.sentences.append("Parity with the native loop, against the same configuration: " + "; ".join(phrases)
                                 + f" ({link('parity table', ANCHOR['parity'])}).")
    single = [r for r in parity_rows if r["adapter"] == summary.adapter and r["role"] == "single-process"
              and r["mode"] == "aligned"]
    if single:
        summary.sentences.append(
            "Against one native process at the same global batch (DDP and accumulation): "
            f"{_verdict_counts(single)} ({link('DDP and accumulation', ANCHOR['distributed'])}).")


def _overhead(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    if summary.adapter == "native":
        summary.cells["overhead"] = "reference"
        return
    paired = tables.get("paired")
    if paired is not None:
        rows = [r for r in paired.rows if r.get("adapter") == summary.adapter and r.get("mode") == "aligned"
                and r.get("overhead_us") is not None]
        if rows:
            row = rows[0]
            text = numbers.signed_ci(row["overhead_us"], row.get("overhead_low"), row.get("overhead_high"), "µs")
            summary.cells["overhead"] = link(text, ANCHOR["paired"])
            where = row.get("cell") or "the paired cell"
            summary.sentences.append(f"Per-step overhead over the native loop, aligned, paired in one process on "
                                     f"{where}: {link(text, ANCHOR['paired'])} per step.")
            return
    scaling = tables.get("scaling")
    rows = [r for r in (scaling.rows if scaling else []) if r["adapter"] == summary.adapter and r["mode"] == "aligned"
            and r["precision"] == "fp32" and r.get("fixed_minus_native_us") is not None]
    if rows:
        row = rows[0]
        text = numbers.signed_ci(row["fixed_minus_native_us"], row.get("fixed_minus_native_low"),
                                 row.get("fixed_minus_native_high"), "µs")
        summary.cells["overhead"] = link(text, ANCHOR["scaling"])
        summary.sentences.append(f"Fixed per-step overhead over the native loop, aligned, from the width sweep "
                                 f"(separate processes): {link(text, ANCHOR['scaling'])} per step.")
        return
    overhead = tables["overhead"]
    rows = [r for r in overhead.rows if r["adapter"] == summary.adapter and r["mode"] == "aligned"
            and r["precision"] == "fp32" and (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) == 1
            and r.get("overhead_us") is not None]
    if rows:
        row = rows[0]
        text = numbers.signed_ci(row["overhead_us"], row.get("overhead_low"), row.get("overhead_high"), "µs")
        summary.cells["overhead"] = link(text, ANCHOR["overhead"])
        summary.sentences.append(f"Per-step overhead over the native loop on {row['task_key']}, aligned (separate "
                                 f"processes): {link(text, ANCHOR['overhead'])} per step, "
                                 f"verdict: {row.get('test_verdict')}.")
    else:
        summary.cells["overhead"] = "not measured"


def _defaults(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    rows = [r for r in tables["defaults"].rows if r["adapter"] == summary.adapter and r.get("step_cost_us") is not None]
    if summary.adapter == "native":
        summary.cells["defaults"] = "–"
        return
    if not rows:
        summary.cells["defaults"] = "not run"
        return
    row = rows[0]
    text = numbers.signed_ci(row["step_cost_us"], row.get("step_cost_low"), row.get("step_cost_high"), "µs")
    where = row["cell"].split(": ", 1)[-1]
    summary.cells["defaults"] = link(text, ANCHOR["defaults"])
    summary.sentences.append(f"Its defaults (as a new user gets them) cost {link(text, ANCHOR['defaults'])} per step "
                             f"more than aligned on {where}.")


def _startup(summary: AdapterSummary, tables: dict[str, Table], native_startup: float | None) -> None:
    rows = [r for r in tables["overhead"].rows if r["adapter"] == summary.adapter and r["mode"] == "aligned"
            and r["precision"] == "fp32" and (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) == 1
            and r.get("startup_s") is not None]
    if not rows:
        summary.cells["startup"] = "not measured"
        return
    row = rows[0]
    text = numbers.with_ci(row["startup_s"], row.get("startup_s_low"), row.get("startup_s_high"), "s")
    summary.cells["startup"] = link(text, ANCHOR["overhead"])
    extra = ""
    if summary.adapter != "native" and native_startup is not None:
        extra = f" ({numbers.signed(row['startup_s'] - native_startup, 's')} against native)"
    summary.sentences.append(f"Start-up, launch to the first optimizer step on {row['task_key']}: "
                             f"{link(text, ANCHOR['overhead'])}{extra}.")


def _syncs(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    syncs = tables.get("syncs")
    rows = [r for r in (syncs.rows if syncs else []) if r.get("adapter") == summary.adapter
            and r.get("syncs_per_step") is not None]
    if not rows:
        summary.cells["syncs"] = "not measured"
        return
    parts = [f"{numbers.sig(r['syncs_per_step'])} ({r.get('mode')})" for r in rows]
    summary.cells["syncs"] = link(" · ".join(parts), ANCHOR["syncs"])
    worst = max(rows, key=lambda r: r["syncs_per_step"])
    if worst["syncs_per_step"]:
        where = f" at {worst['top_site']}" if worst.get("top_site") else ""
        summary.sentences.append("Host syncs per step (each would stall a GPU): "
                                 f"{link(' · '.join(parts), ANCHOR['syncs'])}{where}.")
    else:
        summary.sentences.append(f"It forces no host sync per step ({link('host syncs', ANCHOR['syncs'])}).")


def _infers(summary: AdapterSummary, tables: dict[str, Table]) -> None:
    library = INFERENCE_LIBRARY.get(summary.adapter.partition("@")[0])
    rows = [r for r in tables["inference"].rows if library and r["library"].startswith(library)]
    if not rows:
        summary.cells["infers"] = "–"
        return
    row = rows[-1]
    classes = row["num_classes"].split(":", 1)[0]
    summary.cells["infers"] = link(f"num_classes {classes}", ANCHOR["inference"])
    summary.sentences.append(f"Through {row['entry_point'].split('(')[0]} the user states by hand: "
                             f"{row['stated_by_hand']} ({link('what it infers', ANCHOR['inference'])}).")


def summaries(frame, tables: dict[str, Table]) -> list[AdapterSummary]:
    parity_rows = tables["parity"].rows
    natives = [r for r in tables["overhead"].rows if r["adapter"] == "native" and r["precision"] == "fp32"
               and (r["world_size"] or 1) == 1 and (r["grad_accum"] or 1) == 1 and r.get("startup_s") is not None]
    native_startup = natives[0]["startup_s"] if natives else None
    out = []
    for adapter, label, style in _adapters(frame):
        summary = AdapterSummary(adapter=adapter, label=label, style=style)
        _parity(summary, parity_rows, frame)
        _overhead(summary, tables)
        _defaults(summary, tables)
        _startup(summary, tables, native_startup)
        _syncs(summary, tables)
        _infers(summary, tables)
        summary.cells["findings"] = (link(f"{len(summary.findings)} contradicted", ANCHOR["parity"])
                                     if summary.findings else "none")
        if summary.findings:
            summary.sentences.append("Declared verdicts the measurements contradict: " + "; ".join(summary.findings)
                                     + ".")
        out.append(summary)
    return out


SCOREBOARD_COLUMNS = [
    Column("label", "adapter (library version)", numeric=False),
    Column("style", "style", numeric=False),
    Column("fp32", "parity: aligned fp32", numeric=False, markup=True),
    Column("bf16", "parity: bf16-mixed", numeric=False, markup=True),
    Column("fp16", "parity: fp16-mixed", numeric=False, markup=True),
    Column("ddp", "parity: DDP", numeric=False, markup=True),
    Column("accumulation", "parity: accumulation", numeric=False, markup=True),
    Column("overhead", "overhead µs/step (95% CI)", numeric=False, markup=True),
    Column("defaults", "defaults cost µs/step (95% CI)", numeric=False, markup=True),
    Column("startup", "start-up s (95% CI)", numeric=False, markup=True),
    Column("syncs", "host syncs/step", numeric=False, markup=True),
    Column("infers", "infers", numeric=False, markup=True),
    Column("findings", "contradicted declarations", numeric=False, markup=True),
]


def scoreboard(summaries_: list[AdapterSummary]) -> Table:
    rows = [{"label": s.label, "style": s.style or "–", "adapter": s.adapter, **s.cells} for s in summaries_]
    columns = [c for c in SCOREBOARD_COLUMNS
               if c.key in ("label", "style") or any(r.get(c.key) not in (None, "not run", "–", "not measured")
                                                      for r in rows)]
    note = ("One row per adapter and library version; each cell is the short form of a detailed table below (follow "
            "its link). Parity counts the adapter's aligned runs by verdict against the native run with the same "
            "configuration. Overhead is the paired in-process measurement where the report has one, else the fixed "
            "term of the width sweep, else one task's difference of medians.")
    return Table("scoreboard", "Scoreboard", columns, rows, note)
