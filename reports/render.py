"""Render a built report as Markdown (+ PNG files), one self-contained HTML file, CSV and JSON.

Both documents come from one outline (:func:`outline`): what the report found first (findings, the
scoreboard, the claims ledger), then the evidence, section by section, then provenance and how to
reproduce and cite it. Text in the outline is written in a small Markdown subset (``code``,
``**bold**``, ``*italic*``, ``[links](#anchor)``) that the HTML renders properly. Long tables fold
away (``<details>``), empty sections are one line, numbers have three significant figures.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reports import numbers
from reports.analysis import Column
from reports.findings import ANCHOR, TITLES

# (column, heading) of the every-run table in Markdown and HTML; the CSV holds every column.
DISPLAY = [
    ("task", "task"),
    ("options", "options"),
    ("adapter", "adapter"),
    ("mode", "mode"),
    ("precision", "precision"),
    ("world_size", "ranks"),
    ("grad_accum", "accum."),
    ("seed", "seed"),
    ("repeat", "repeat"),
    ("status", "status"),
    ("parity", "parity"),
    ("median_step_us", "median step µs"),
    ("peak_memory_mib", "peak MiB"),
    ("final_loss", "final loss"),
    ("eval_metric", "eval metric"),
    ("mfu", "MFU"),
    ("coverage", "sample coverage"),
    ("weights_digest", "weights digest"),
    ("spec_id", "spec id"),
]
NUMERIC_DISPLAY = {"median_step_us", "peak_memory_mib", "final_loss", "eval_metric", "mfu", "world_size", "grad_accum",
                   "seed", "repeat"}
COLLAPSE_ROWS = 12
"""Tables longer than this fold away in the HTML and on code-hosting sites."""


def fmt(value: Any) -> str:
    """How a figure is printed in Markdown and HTML: three significant figures, '–' when absent."""
    if value is None or value is pd.NA:
        return numbers.MISSING
    if isinstance(value, float):
        return numbers.sig(value)
    return str(value)


def mib(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value / 2**20


def display_rows(frame: pd.DataFrame) -> list[dict[str, str]]:
    rows = []
    for _, row in frame.iterrows():
        cells = {}
        for column, _ in DISPLAY:
            if column == "peak_memory_mib":
                cells[column] = fmt(mib(row["peak_memory_bytes"]))
            elif column == "weights_digest":
                cells[column] = fmt(row[column])[:12]
            elif column == "eval_metric" and isinstance(row["metric_name"], str) and not pd.isna(row["eval_metric"]):
                cells[column] = f"{fmt(row[column])} ({row['metric_name']})"
            elif column == "parity" and row["adapter"] == "native" and pd.isna(row["parity"]) and row["status"] == "ok":
                cells[column] = "reference"
            else:
                cells[column] = fmt(None if pd.isna(row[column]) else row[column])
        rows.append(cells)
    return rows


def cell_text(row: dict[str, Any], column) -> str:
    value = row.get(column.key)
    if column.key == "p_value":
        return numbers.p_value(value)
    if column.low and value is not None and row.get(column.low) is not None and row.get(column.high) is not None:
        return numbers.with_ci(value, row[column.low], row[column.high])
    return fmt(value)


# --------------------------------------------------------------------------- the outline


@dataclass
class Section:
    anchor: str
    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)
    """Inline-Markdown paragraphs before the table."""
    table: Any = None
    empty: str = ""
    """One line instead of the section when it has nothing to show."""
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(file name, caption, PNG bytes)."""
    code: list[tuple[str, str]] = field(default_factory=list)
    """(language, text) blocks after the table."""
    collapse: bool = True
    """Fold the table away when it is long."""

    @property
    def is_empty(self) -> bool:
        """Nothing to show: a section with a table has no rows, one without has no text either."""
        if not self.empty:
            return False
        if self.table is not None:
            return not self.table.rows and not self.figures
        return not (self.paragraphs or self.figures or self.code)


def _titled(key: str) -> tuple[str, str]:
    return ANCHOR[key], TITLES[key]


def _figures(report, prefix: str) -> list[tuple[str, str, bytes]]:
    return [(name, caption, png) for name, (caption, png) in report.figures.items() if name.startswith(prefix)]


def outline(report) -> tuple[list[str], list[Section]]:
    """(the opening paragraphs, the sections) of the report."""
    tables = report.tables
    opening = [report.summary_line, report.citation_line]
    findings = Section(*_titled('findings'), paragraphs=[
        f"**{s.label}** ({s.style or 'reference'}). " + " ".join(s.sentences) for s in report.summaries
    ], empty="No adapter finished a run.")
    sections = [
        findings,
        Section(*_titled('scoreboard'), table=tables["scoreboard"], collapse=False),
        Section(*_titled('claims'), table=tables.get("claims"), collapse=False,
                paragraphs=[tables["claims"].note] if tables.get("claims") is not None else [],
                empty="No claim in the ledger concerns the libraries run here."),
    ]
    cost = []
    if tables.get("paired") is not None and tables["paired"].rows:
        cost.append(Section(*_titled('paired'), level=3, table=tables["paired"],
                            paragraphs=[tables["paired"].note], figures=_figures(report, "attribution-")))
    cost += [
        Section(*_titled('overhead'), level=3, table=tables["overhead"],
                paragraphs=[tables["overhead"].note], figures=_figures(report, "overhead-"), empty="No runs."),
        Section(*_titled('scaling'), level=3, table=tables["scaling"],
                paragraphs=[tables["scaling"].note], figures=_figures(report, "scaling-"),
                empty="No `scaling` runs: no decomposition of the step time."),
    ]
    sections.append(Section(*_titled('cost'), paragraphs=[
        "Where each library's time per optimizer step goes, against the native loop on the same task. "
        "Step times exclude each run's warm-up steps."]))
    sections += cost
    if tables.get("syncs") is not None and tables["syncs"].rows:
        sections.append(Section(*_titled('syncs'), table=tables["syncs"], paragraphs=[tables["syncs"].note]))
    sections += [
        Section(*_titled('defaults'), table=tables["defaults"],
                paragraphs=[tables["defaults"].note], empty="No adapter ran in `defaults` mode here."),
        Section(*_titled('parity'), table=tables["parity"], paragraphs=[tables["parity"].note],
                empty="No run has a parity verdict (no native run in the same cell)."),
        Section(*_titled('distributed'), table=tables["distributed"],
                paragraphs=[tables["distributed"].note], empty="No DDP or gradient-accumulation runs here."),
        Section(*_titled('coverage'), table=tables["coverage"], paragraphs=[tables["coverage"].note],
                empty="No run recorded its sample coverage."),
        Section(*_titled('repeats'), table=tables["repeats"], paragraphs=[tables["repeats"].note],
                empty="No spec was repeated with the same seed."),
        Section(*_titled('precision'), table=tables["precision"],
                paragraphs=[tables["precision"].note], empty="No mixed-precision run has an fp32 counterpart here."),
        Section(*_titled('inference'), table=tables["inference"], paragraphs=[tables["inference"].note],
                empty="No high-level API (fastai, Keras, HF Trainer, Flash) was compared here."),
        Section(*_titled('runs'), table=EveryRun(report), paragraphs=[
            "Step times are medians after each run's warm-up steps; peak memory is peak RSS on CPU and "
            "`torch.cuda.max_memory_allocated` on CUDA. Every figure is the value MLflow holds for the run; "
            "`results.csv` has them at full precision, `steps.csv` and `raw.json` every step."]),
    ]
    problems = _problems(report.frame)
    if problems:
        sections.append(Section(*_titled('problems'), paragraphs=[
            f"`{spec_id}` {status}: {_inline_safe(error)}" for spec_id, status, error in problems]))
    others = [f for f in _figures(report, "") if not f[0].startswith(("overhead-", "scaling-", "attribution-"))]
    if others:
        sections.append(Section(*_titled('plots'), figures=others))
    sections.append(Section(*_titled('provenance'), paragraphs=[
        f"**{name.replace('_', ' ')}**: {_inline_safe(', '.join(values)) if values else numbers.MISSING}"
        for name, values in report.provenance.items()
    ] + ["Raw data: `raw.json` (every run's params, tags, metrics, per-step histories and environment, as MLflow "
         "holds them), `steps.csv` (per-step loss and step time), `results.csv` (one row per run)."]))
    sections.append(Section(*_titled('cite'), paragraphs=[
        f"Generated {report.generated_at} by bakeoff. The report id is the SHA-256 of the report's content (the raw "
        "run data, the task declarations, the claims ledger and every table), so the same runs always give the same "
        "id and any changed figure gives a new one. `bakeoff report --verify <this folder>` recomputes every file."],
        code=[("sh", "\n".join(report.reproduce)), ("text", report.citation), ("bibtex", report.bibtex),
              ("yaml", report.citation_cff)]))
    return opening, sections


class EveryRun:
    """The every-run table in the shape the section renderer expects."""

    def __init__(self, report) -> None:
        self.name = "runs"
        self.columns = [Column(key, heading, numeric=key in NUMERIC_DISPLAY) for key, heading in DISPLAY]
        self.rows = display_rows(report.frame)
        self.statuses = [str(s) for s in report.frame["status"]]


def _problems(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(spec id, status, error) of every run that did not finish ok."""
    bad = frame[frame["status"] != "ok"]
    return [(r["spec_id"], r["status"], str(r["error"])) for _, r in bad.iterrows()]


def _inline_safe(text: str) -> str:
    """Free text (an error message) inside inline Markdown: markup characters lose their meaning."""
    return re.sub(r"([`*_\[\]|])", r"\\\1", str(text)).replace("\n", " ")


# --------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell(table, row: dict[str, Any], column) -> str:
    """A table cell's text: strings as they are (inline Markdown in ``markup`` columns), figures formatted."""
    value = row.get(column.key)
    return value if isinstance(value, str) else cell_text(row, column)


def _md_table(table) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(c.heading) for c in table.columns) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(_cell(table, row, c)) for c in table.columns) + " |")
    return lines


def markdown(report) -> str:
    opening, sections = outline(report)
    lines = [f"# {report.title}", "", *[line for text in opening for line in (text, "")]]
    for section in sections:
        hashes = "#" * section.level
        if section.is_empty:
            lines += [f"{hashes} {section.title}", "", section.empty, ""]
            continue
        lines += [f"{hashes} {section.title}", ""]
        for text in section.paragraphs:
            lines += [text, ""]
        if section.table is not None and section.table.rows:
            table = _md_table(section.table)
            if section.collapse and len(section.table.rows) > COLLAPSE_ROWS:
                lines += [f"<details><summary>{len(section.table.rows)} rows</summary>", "", *table, "", "</details>",
                          ""]
            else:
                lines += [*table, ""]
        for name, caption, _ in section.figures:
            lines += [f"![{caption}]({name})", ""]
        for language, text in section.code:
            lines += [f"```{language}", text, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML


INLINE = re.compile(r"\\([`*_\[\]|\\])|`([^`]+)`|\*\*(.+?)\*\*|\*([^*]+)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline_html(text: str) -> str:
    """The Markdown subset the outline uses, as HTML (everything else escaped)."""
    out, position = [], 0
    for match in INLINE.finditer(text):
        out.append(html.escape(text[position:match.start()]))
        escaped, code, bold, italic, label, target = match.groups()
        if escaped:
            out.append(html.escape(escaped))
        elif code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline_html(bold)}</strong>")
        elif italic is not None:
            out.append(f"<em>{inline_html(italic)}</em>")
        else:
            out.append(f'<a href="{html.escape(target)}">{inline_html(label)}</a>')
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


NUMERIC_CELL = "text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.2rem 1.6rem;max-width:1600px;color:#1d1d1d;
font-size:14px;line-height:1.35}
h1{font-size:1.45rem;margin:.2rem 0 .4rem}h2{font-size:1.15rem;margin:1.4rem 0 .4rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1rem 0 .3rem}p{margin:.3rem 0}p.lead{color:#444;margin:.15rem 0}
#findings p{margin:.25rem 0;font-size:13px}
div.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12px;margin:.35rem 0}
th,td{border:1px solid #d4d4d4;padding:.18rem .4rem;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
td{max-width:28rem}tr.failed td{background:#fdecea}tr.unsupported td{color:#777}
code{background:#f4f4f4;padding:0 .15rem;border-radius:2px}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto}
img{max-width:100%;border:1px solid #eee;margin:.3rem 0}figure{margin:.4rem 0}figcaption{font-size:12px;color:#555}
details summary{cursor:pointer;color:#245;margin:.2rem 0}a{color:#1a5fb4}
#scoreboard td,#scoreboard th{white-space:nowrap}
"""

# Inline (the page stays self-contained): records on <body> how many images decoded and how many
# tables have rows, so a headless browser's DOM dump shows whether the page rendered.
RENDER_CHECK = (
    "window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);"
    "document.body.dataset.imagesTotal=i.length;"
    "document.body.dataset.imagesDecoded=i.filter(function(x){return x.complete&&x.naturalWidth>0}).length;"
    "document.body.dataset.tablesWithRows=document.querySelectorAll('table.report-table tbody tr:first-child').length;"
    "});"
)


def _html_table(table, *, collapse: bool) -> list[str]:
    # Numeric columns are aligned by one rule per table (nth-child), not a class on every cell: the
    # standard suite's tables have thousands of cells.
    name = html.escape(table.name)
    numeric = [f"#table-{name} td:nth-child({i})" for i, c in enumerate(table.columns, start=1) if c.numeric]
    parts = [f"<style>{','.join(numeric)}{{{NUMERIC_CELL}}}</style>" if numeric else "",
             f'<div class="scroll"><table class="report-table" id="table-{name}"><thead><tr>']
    parts += [f"<th>{html.escape(c.heading)}</th>" for c in table.columns]
    parts.append("</tr></thead><tbody>")
    statuses = getattr(table, "statuses", None)
    for index, row in enumerate(table.rows):
        status = statuses[index] if statuses else "ok"
        css = f' class="{html.escape(status)}"' if status != "ok" else ""
        cells = []
        for column in table.columns:
            value = _cell(table, row, column)
            text = inline_html(value) if getattr(column, "markup", False) else html.escape(value)
            cells.append(f"<td>{text}</td>")
        parts.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    if collapse and len(table.rows) > COLLAPSE_ROWS:
        return [f"<details><summary>{len(table.rows)} rows</summary>", *parts, "</details>"]
    return parts


def _html_figure(caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_page(report) -> str:
    opening, sections = outline(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        *[f'<p class="lead">{inline_html(text)}</p>' for text in opening],
    ]
    for section in sections:
        tag = f"h{section.level}"
        parts.append(f'<section id="{section.anchor}"><{tag}>{html.escape(section.title)}</{tag}>')
        if section.is_empty:
            parts.append(f"<p>{inline_html(section.empty)}</p></section>")
            continue
        parts += [f"<p>{inline_html(text)}</p>" for text in section.paragraphs]
        if section.table is not None and section.table.rows:
            parts += _html_table(section.table, collapse=section.collapse)
        parts += [_html_figure(caption, png) for _, caption, png in section.figures]
        parts += [f'<pre class="{language}">{html.escape(text)}</pre>' for language, text in section.code]
        parts.append("</section>")
    parts.append(f"<script>{RENDER_CHECK}</script></body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- data files


def csv_text(report) -> str:
    return report.frame.to_csv(index=False, lineterminator="\n")


def json_text(report, files: dict[str, str] | None = None) -> str:
    document = report.to_dict()
    if files is not None:
        document["files"] = files
    return json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_all(report, folder: Path, extra: dict[str, str] | None = None) -> dict[str, Path]:
    """Write every output (and ``extra`` name → text files) into ``folder``; returns name → path.

    ``report.json`` comes last and lists the SHA-256 of every other file, so ``--verify`` can tell
    that no file of the folder was changed, the HTML readers open included.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (_, png) in report.figures.items():
        (folder / name).write_bytes(png)
        written[name] = folder / name
    texts = {"report.md": markdown(report), "report.html": html_page(report), "results.csv": csv_text(report),
             **(extra or {})}
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
        written[name] = folder / name
    files = {name: file_digest(path) for name, path in sorted(written.items())}
    (folder / "report.json").write_text(json_text(report, files), encoding="utf-8")
    written["report.json"] = folder / "report.json"
    return written


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
