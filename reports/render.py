"""Render a built report as Markdown (+ PNG files), one self-contained HTML file, CSV and JSON."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

# (column, heading) of the summary table in Markdown and HTML; the CSV holds every column.
DISPLAY = [
    ("task", "task"),
    ("options", "options"),
    ("adapter", "adapter"),
    ("mode", "mode"),
    ("precision", "precision"),
    ("world_size", "ws"),
    ("grad_accum", "acc"),
    ("seed", "seed"),
    ("repeat", "rep"),
    ("status", "status"),
    ("parity", "parity"),
    ("median_step_us", "median µs/step"),
    ("throughput_samples_per_s", "samples/s"),
    ("peak_memory_mib", "peak MiB"),
    ("final_loss", "final loss"),
    ("eval_metric", "eval metric"),
    ("weights_digest", "weights digest"),
    ("spec_id", "spec id"),
]


def fmt(value: Any) -> str:
    """How every figure is printed in Markdown and HTML: 6 significant digits, '–' when absent."""
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.6g}"
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
                cells[column] = fmt(row[column])[:16]
            elif column == "eval_metric" and isinstance(row["metric_name"], str) and not pd.isna(row["eval_metric"]):
                cells[column] = f"{fmt(row[column])} ({row['metric_name']})"
            elif column == "parity" and row["adapter"] == "native" and pd.isna(row["parity"]) and row["status"] == "ok":
                cells[column] = "reference"
            else:
                cells[column] = fmt(None if pd.isna(row[column]) else row[column])
        rows.append(cells)
    return rows


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _problems(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(spec id, status, error) of every run that did not finish ok."""
    bad = frame[frame["status"] != "ok"]
    return [(r["spec_id"], r["status"], str(r["error"])) for _, r in bad.iterrows()]


SECTIONS = (
    ("overhead", None),
    ("scaling", None),
    ("defaults", None),
    ("parity", None),
    ("repeats", "Reproducibility"),
    ("precision", None),
    ("distributed", None),
    ("inference", "High-level APIs"),
)
EMPTY = {
    "overhead": "No runs.",
    "scaling": "No `scaling` runs in this report: no decomposition.",
    "defaults": "No adapter was run in `defaults` mode here.",
    "parity": "No run has a parity verdict (no native reference run in the same cell).",
    "repeats": "No spec was repeated with the same seed.",
    "precision": "No mixed-precision run has an fp32 counterpart here.",
    "distributed": "No DDP or gradient-accumulation runs here.",
    "inference": "No high-level API (fastai, Keras, HF Trainer, Flash) was compared here.",
}


def cell_text(row: dict[str, Any], column) -> str:
    value = row.get(column.key)
    if column.low and value is not None and row.get(column.low) is not None and row.get(column.high) is not None:
        return f"{fmt(value)} [{fmt(row[column.low])}, {fmt(row[column.high])}]"
    return fmt(value)


def _md_table(table) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(c.heading) for c in table.columns) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(cell_text(row, c)) for c in table.columns) + " |")
    return lines


def _figure_names(report, prefix: str) -> list[tuple[str, str]]:
    return [(name, caption) for name, (caption, _) in report.figures.items() if name.startswith(prefix)]


def markdown(report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- report id: `{report.report_id}`", f"- source: {report.source_line}",
              f"- runs: {report.counts_line}", f"- measured on: {report.measured_on}"]
    if report.parity_line:
        lines.append(f"- parity: {report.parity_line}")
    lines += ["- verify: `bakeoff report --verify <this folder>` recomputes every table and the id from `raw.json`",
              ""]
    for name, group in SECTIONS:
        table = report.tables[name]
        if group:
            lines += [f"## {group}", ""]
        level = "###" if name in ("repeats", "precision", "distributed") else "##"
        lines += [f"{level} {table.title}", ""]
        lines += (_md_table(table) if table.rows else [EMPTY[name]]) + [""]
        lines += [table.note, ""]
        plots = {"overhead": "overhead-", "scaling": "scaling-"}.get(name)
        for figure, caption in _figure_names(report, plots) if plots else []:
            lines += [f"![{caption}]({figure})", ""]
    lines += ["## Every run", ""]
    lines.append("| " + " | ".join(h for _, h in DISPLAY) + " |")
    lines.append("|" + "|".join("---" for _ in DISPLAY) + "|")
    for row in display_rows(report.frame):
        lines.append("| " + " | ".join(_md_escape(row[c]) for c, _ in DISPLAY) + " |")
    lines.append("")
    lines.append("Step times are medians after each run's warm-up steps; peak memory is peak RSS on CPU and "
                 "`torch.cuda.max_memory_allocated` on CUDA. Every figure is the value MLflow holds for the run; "
                 "`results.csv` has them at full precision, `steps.csv` and `raw.json` every step.")
    lines.append("")
    problems = _problems(report.frame)
    if problems:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- `{spec_id}` {status}: {_md_escape(error)}" for spec_id, status, error in problems]
        lines.append("")
    others = [(n, c) for n, c in _figure_names(report, "") if not n.startswith(("overhead-", "scaling-"))]
    if others:
        lines += ["## Plots", ""]
        for name, caption in others:
            lines += [f"![{caption}]({name})", ""]
    lines += _provenance_md(report)
    return "\n".join(lines).rstrip() + "\n"


def _provenance_md(report) -> list[str]:
    lines = ["## Provenance", ""]
    for name, values in report.provenance.items():
        lines.append(f"- {name.replace('_', ' ')}: {', '.join(values) if values else '–'}")
    lines += ["", "Raw data: `raw.json` (every run's params, tags, metrics, per-step histories and environment, "
              "as MLflow holds them), `steps.csv` (per-step loss and step time), `results.csv` (one row per run).", ""]
    lines += ["## Reproduce and cite", "", "Reproduce:", "", "```sh", *report.reproduce, "```", ""]
    lines += ["Cite as:", "", "```text", report.citation, "```", ""]
    lines += ["BibTeX:", "", "```bibtex", report.bibtex, "```", ""]
    lines += ["CITATION.cff:", "", "```yaml", report.citation_cff, "```", ""]
    lines += [f"Generated {report.generated_at} by bakeoff. The report id is the SHA-256 of the report's content "
              "(the raw run data, the task declarations and every table), so the same runs always give the same id "
              "and any changed figure gives a new one.", ""]
    return lines


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;max-width:1500px;color:#222}
div.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.8rem;margin:.5rem 0;width:max-content}
td{max-width:26rem}
th,td{border:1px solid #ccc;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.failed td{background:#fdecea}tr.unsupported td{color:#777}code,pre{background:#f6f6f6}
pre{padding:.6rem;overflow-x:auto}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
p.note{font-size:.85rem;color:#444;max-width:1100px}
"""
NUMERIC_DISPLAY = {
    "median_step_us", "throughput_samples_per_s", "peak_memory_mib", "final_loss", "eval_metric", "world_size",
    "grad_accum", "seed", "repeat",
}


# Inline (the page stays self-contained): records on <body> how many images decoded and how many
# tables have rows, so a headless browser's DOM dump shows whether the page rendered.
RENDER_CHECK = (
    "window.addEventListener('load',function(){var i=Array.prototype.slice.call(document.images);"
    "document.body.dataset.imagesTotal=i.length;"
    "document.body.dataset.imagesDecoded=i.filter(function(x){return x.complete&&x.naturalWidth>0}).length;"
    "document.body.dataset.tablesWithRows=document.querySelectorAll('table.report-table tbody tr:first-child').length;"
    "});"
)


def _html_table(table, e) -> list[str]:
    parts = [f'<div class="scroll"><table class="report-table" id="table-{e(table.name)}"><thead><tr>']
    parts += [f"<th>{e(c.heading)}</th>" for c in table.columns]
    parts.append("</tr></thead><tbody>")
    for row in table.rows:
        parts.append("<tr>" + "".join(f'<td class="{"num" if c.numeric else ""}">{e(cell_text(row, c))}</td>'
                                      for c in table.columns) + "</tr>")
    parts.append("</tbody></table></div>")
    return parts


def _html_figure(caption: str, png: bytes, e) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def html_page(report) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1><ul>",
        f"<li>report id: <code>{e(report.report_id)}</code></li>",
        f"<li>source: {e(report.source_line)}</li><li>runs: {e(report.counts_line)}</li>",
        f"<li>measured on: {e(report.measured_on)}</li>",
    ]
    if report.parity_line:
        parts.append(f"<li>parity: {e(report.parity_line)}</li>")
    parts.append("<li>verify: <code>bakeoff report --verify &lt;this folder&gt;</code> recomputes every table and the "
                 "id from <code>raw.json</code></li></ul>")
    for name, group in SECTIONS:
        table = report.tables[name]
        if group:
            parts.append(f"<h2>{e(group)}</h2>")
        level = "h3" if name in ("repeats", "precision", "distributed") else "h2"
        parts.append(f"<{level}>{e(table.title)}</{level}>")
        parts += _html_table(table, e) if table.rows else [f"<p>{e(EMPTY[name].replace('`', ''))}</p>"]
        parts.append(f'<p class="note">{e(table.note)}</p>')
        prefix = {"overhead": "overhead-", "scaling": "scaling-"}.get(name)
        for figure, (caption, png) in report.figures.items():
            if prefix and figure.startswith(prefix):
                parts.append(_html_figure(caption, png, e))
    parts.append('<h2>Every run</h2><div class="scroll"><table class="report-table" id="table-runs"><thead><tr>')
    parts += [f"<th>{e(h)}</th>" for _, h in DISPLAY]
    parts.append("</tr></thead><tbody>")
    for row in display_rows(report.frame):
        parts.append(f'<tr class="{e(row["status"])}">')
        parts += [f'<td class="{"num" if c in NUMERIC_DISPLAY else ""}">{e(row[c])}</td>' for c, _ in DISPLAY]
        parts.append("</tr>")
    parts.append("</tbody></table></div>")
    problems = _problems(report.frame)
    if problems:
        parts.append("<h2>Runs that did not finish</h2><ul>")
        parts += [f"<li><code>{e(s)}</code> {e(st)}: {e(err)}</li>" for s, st, err in problems]
        parts.append("</ul>")
    others = [(n, v) for n, v in report.figures.items() if not n.startswith(("overhead-", "scaling-"))]
    if others:
        parts.append("<h2>Plots</h2>")
        parts += [_html_figure(caption, png, e) for _, (caption, png) in others]
    parts.append("<h2>Provenance</h2><ul>")
    for name, values in report.provenance.items():
        parts.append(f"<li>{e(name.replace('_', ' '))}: {e(', '.join(values) if values else '–')}</li>")
    parts.append("</ul><p>Raw data: raw.json, steps.csv and results.csv beside this file.</p>")
    parts.append(f"<h2>Reproduce and cite</h2><p>Reproduce:</p><pre>{e(chr(10).join(report.reproduce))}</pre>")
    parts.append(f"<p>Cite as:</p><pre>{e(report.citation)}</pre>")
    parts.append(f'<p>BibTeX:</p><pre id="bibtex">{e(report.bibtex)}</pre>')
    parts.append(f'<p>CITATION.cff:</p><pre id="citation-cff">{e(report.citation_cff)}</pre>')
    parts.append(f"<p>Generated {e(report.generated_at)} by bakeoff.</p>")
    parts.append(f"<script>{RENDER_CHECK}</script></body></html>")
    return "\n".join(parts) + "\n"


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
