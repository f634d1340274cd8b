"""Render a built report as Markdown (+ PNG files), one self-contained HTML file, CSV and JSON."""

from __future__ import annotations

import base64
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


def _parity_notes(frame: pd.DataFrame) -> list[tuple[str, str]]:
    known = frame[frame["parity_detail"].notna()]
    return [(f"{r['task']} {r['adapter']} {r['mode']} {r['precision']} ws{r['world_size']} ({r['spec_id']})",
             str(r["parity_detail"])) for _, r in known.iterrows()]


def markdown(report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- report id: `{report.report_id}`", f"- source: {report.source_line}", f"- runs: {report.counts_line}"]
    if report.parity_line:
        lines.append(f"- parity: {report.parity_line}")
    lines.append("")
    lines += ["## Results", ""]
    lines.append("| " + " | ".join(h for _, h in DISPLAY) + " |")
    lines.append("|" + "|".join("---" for _ in DISPLAY) + "|")
    for row in display_rows(report.frame):
        lines.append("| " + " | ".join(_md_escape(row[c]) for c, _ in DISPLAY) + " |")
    lines.append("")
    lines.append("Step times are medians after each run's warm-up steps; peak memory is peak RSS on CPU and "
                 "`torch.cuda.max_memory_allocated` on CUDA. Every figure is the value MLflow holds for the run; "
                 "`results.csv` has them at full precision.")
    lines.append("")
    notes = _parity_notes(report.frame)
    if notes:
        lines += ["## Parity against the native loop", ""]
        lines += [f"- {_md_escape(who)}: {_md_escape(detail)}" for who, detail in notes]
        lines.append("")
    problems = _problems(report.frame)
    if problems:
        lines += ["## Runs that did not finish", ""]
        lines += [f"- `{spec_id}` {status}: {_md_escape(error)}" for spec_id, status, error in problems]
        lines.append("")
    if report.figures:
        lines += ["## Plots", ""]
        for name, (caption, _) in report.figures.items():
            lines += [f"![{caption}]({name})", ""]
    lines += _provenance_md(report)
    return "\n".join(lines).rstrip() + "\n"


def _provenance_md(report) -> list[str]:
    lines = ["## Provenance and reproduction", ""]
    for name, values in report.provenance.items():
        lines.append(f"- {name.replace('_', ' ')}: {', '.join(values) if values else '–'}")
    lines += ["", "Reproduce:", "", "```sh", *report.reproduce, "```", ""]
    lines += ["Cite as:", "", "```text", report.citation, "```", ""]
    lines += [f"Generated {report.generated_at} by bakeoff; the report id is derived from the report's content "
              "(its table and run ids), so the same runs always give the same id.", ""]
    return lines


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:.82rem}th,td{border:1px solid #ccc;padding:.25rem .45rem;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fdecea}tr.unsupported td{color:#777}code,pre{background:#f6f6f6}
pre{padding:.6rem;overflow-x:auto}img{max-width:100%;border:1px solid #eee;margin:.5rem 0}
"""
NUMERIC_DISPLAY = {
    "median_step_us", "throughput_samples_per_s", "peak_memory_mib", "final_loss", "eval_metric", "world_size",
    "grad_accum", "seed", "repeat",
}


def html_page(report) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1><ul>",
        f"<li>report id: <code>{e(report.report_id)}</code></li>",
        f"<li>source: {e(report.source_line)}</li><li>runs: {e(report.counts_line)}</li>",
    ]
    if report.parity_line:
        parts.append(f"<li>parity: {e(report.parity_line)}</li>")
    parts.append("</ul><h2>Results</h2><table><thead><tr>")
    parts += [f"<th>{e(h)}</th>" for _, h in DISPLAY]
    parts.append("</tr></thead><tbody>")
    for row in display_rows(report.frame):
        parts.append(f'<tr class="{e(row["status"])}">')
        parts += [f'<td class="{"num" if c in NUMERIC_DISPLAY else ""}">{e(row[c])}</td>' for c, _ in DISPLAY]
        parts.append("</tr>")
    parts.append("</tbody></table>")
    notes = _parity_notes(report.frame)
    if notes:
        parts.append("<h2>Parity against the native loop</h2><ul>")
        parts += [f"<li>{e(who)}: {e(detail)}</li>" for who, detail in notes]
        parts.append("</ul>")
    problems = _problems(report.frame)
    if problems:
        parts.append("<h2>Runs that did not finish</h2><ul>")
        parts += [f"<li><code>{e(s)}</code> {e(st)}: {e(err)}</li>" for s, st, err in problems]
        parts.append("</ul>")
    if report.figures:
        parts.append("<h2>Plots</h2>")
        for caption, png in report.figures.values():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<h2>Provenance and reproduction</h2><ul>")
    for name, values in report.provenance.items():
        parts.append(f"<li>{e(name.replace('_', ' '))}: {e(', '.join(values) if values else '–')}</li>")
    parts.append(f"</ul><p>Reproduce:</p><pre>{e(chr(10).join(report.reproduce))}</pre>")
    parts.append(f"<p>Cite as:</p><pre>{e(report.citation)}</pre>")
    parts.append(f"<p>Generated {e(report.generated_at)} by bakeoff.</p></body></html>")
    return "\n".join(parts) + "\n"


def csv_text(report) -> str:
    return report.frame.to_csv(index=False, lineterminator="\n")


def json_text(report) -> str:
    return json.dumps(report.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_all(report, folder: Path) -> dict[str, Path]:
    """Write every output into ``folder``; returns name → path."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (_, png) in report.figures.items():
        (folder / name).write_bytes(png)
        written[name] = folder / name
    for name, text in (
        ("report.md", markdown(report)),
        ("report.html", html_page(report)),
        ("results.csv", csv_text(report)),
        ("report.json", json_text(report)),
    ):
        (folder / name).write_text(text, encoding="utf-8")
        written[name] = folder / name
    return written
