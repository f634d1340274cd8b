"""Cost records (``bakeoff.cost/1``) as report rows and figures: pure functions, no tracking store.

The report's overhead table leads with these rows: per (task, adapter, mode, precision) cell the
paired overhead in µs per step with its CI and the ratio, the other clock beside it, instructions
per step per arm and their paired difference, host syncs per step with their call sites, and where
the extra time goes. Inputs are the record dicts (``harness.cost.record.read`` /
``read_folder``); outputs are lists of plain dicts (one per table row) and PNG bytes.

Which clock carries a cell's verdict (:func:`verdict`): wall time, when its paired CI half-width
meets the target (at most max(5 µs, 2% of the native step)) — it is what a user waits for,
including work on other threads and time the library blocks; otherwise the instruction count,
which does not drift with the machine's load, when the cell has one; otherwise wall time with the
note that it missed the target. The main-thread CPU clock is always shown beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.cost.analysis import meets_target, worse_arm
from harness.cost.record import key_of, publishable, read_folder
from harness.environment import REPO_ROOT

CLOCKS = ("wall", "thread")
TOP_GROUPS = 8


def by_kind(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"paired": [], "instructions": [], "contamination": []}
    for record in records:
        out.setdefault(record["kind"], []).append(record)
    return out


def cell_key(record: dict[str, Any]) -> tuple:
    cell = record["cell"]
    return (cell["task"], tuple(sorted(cell["options"].items())), cell["adapter"], cell["mode"], cell["precision"])


def _interval(summary: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    return (summary or {}).get(name)


def verdict(paired: dict[str, Any] | None, instructions: dict[str, Any] | None) -> dict[str, Any]:
    """Which clock decides the cell, and why (see the module docstring)."""
    wall = (paired or {}).get("summary", {}).get("wall") if paired and paired["status"] == "ok" else None
    has_instructions = instructions is not None and instructions["status"] == "ok"
    if wall and wall.get("difference"):
        target = wall.get("target") or meets_target(None, None)
        if target.get("met"):
            return {"clock": "wall", "reason": f"wall CI ±{target['half_width_us']:.1f} µs meets the target"}
        if has_instructions:
            return {
                "clock": "instructions",
                "reason": f"wall CI ±{target['half_width_us']:.1f} µs misses the ±{target['target_us']:.1f} µs target "
                f"on this machine; instructions do not drift ({_repeats(instructions)})",
            }
        return {
            "clock": "wall",
            "reason": f"wall CI ±{target['half_width_us']:.1f} µs misses the target (no instructions)",
        }
    if has_instructions:
        return {"clock": "instructions", "reason": "no paired wall-time figure"}
    return {"clock": None, "reason": "not measured"}


def worst_spread(instructions: dict[str, Any]) -> float | None:
    """The worse arm's run-to-run spread of instructions per step ((max − min) / mean), or None."""
    return worse_arm((instructions.get("summary") or {}).get("repeatability"))


def layout_spread(instructions: dict[str, Any]) -> float | None:
    """The worse arm's spread of instructions per step across heap layouts, or None when one layout ran."""
    return worse_arm((instructions.get("summary") or {}).get("layout_spread"))


def _repeats(instructions: dict[str, Any]) -> str:
    """How well the instruction count repeated between the pass's runs (and across layouts), in words."""
    worst = worst_spread(instructions)
    summary = instructions.get("summary") or {}
    runs = summary.get("runs") or 0
    layouts = layout_spread(instructions)
    if layouts is not None:
        text = f"{summary.get('layouts')} heap layouts spread {layouts * 100:.2g}% per arm"
        return text + (f", runs of one layout agree to {worst * 100:.2g}%" if worst is not None else "")
    if worst is None or runs < 2:
        return "one run: repeatability not measured"
    return f"{runs} runs agree to {worst * 100:.2g}% per arm"


LAYOUTS_NOTE = ("deliberately shifted heap layouts (harness.cost.layout): their spread is how far the placement of "
                "objects alone moves the counts, about what an unrelated code change moves them by, and those cells' "
                "instruction figures are the mean over the layouts.")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.4%}"


def _estimate_us(paired: dict[str, Any] | None, instructions: dict[str, Any] | None) -> float | None:
    """Instructions' paired difference in µs, at native's measured rate on the same machine (an estimate)."""
    if not paired or not instructions or paired["status"] != "ok" or instructions["status"] != "ok":
        return None
    native_us = (paired["summary"]["wall"].get("native") or {}).get("value")
    native_instructions = instructions["summary"]["native_per_step"]
    if not native_us or not native_instructions:
        return None
    return instructions["summary"]["difference_per_step"] * native_us / native_instructions


def overhead_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: paired overhead (both clocks), instructions, syncs, attribution coverage, verdict."""
    kinds = by_kind(records)
    instructions = {cell_key(r): r for r in kinds["instructions"]}
    paired = {cell_key(r): r for r in kinds["paired"]}
    rows = []
    for key in sorted(set(paired) | set(instructions), key=_order):
        p, i = paired.get(key), instructions.get(key)
        cell = (p or i)["cell"]
        row: dict[str, Any] = {
            "task": cell["task"],
            "options": cell["options"],
            "adapter": cell["adapter"],
            "mode": cell["mode"],
            "precision": cell["precision"],
            "label": cell["label"],
            "status": (p or i)["status"],
            "error": (p or {}).get("error") or (i or {}).get("error"),
        }
        if p is not None and p["status"] == "ok":
            summary = p["summary"]
            for clock in CLOCKS:
                difference, ratio = _interval(summary[clock], "difference"), _interval(summary[clock], "ratio")
                row[f"{clock}_native_us"] = (summary[clock].get("native") or {}).get("value")
                row[f"{clock}_overhead_us"] = difference
                row[f"{clock}_ratio"] = ratio
                row[f"{clock}_target"] = summary[clock].get("target")
            row["rounds"] = len(p["rounds"])
            syncs = p.get("syncs")
            if syncs:
                row["syncs_per_step"] = syncs["adapter"]["per_step"]
                row["native_syncs_per_step"] = syncs["native"]["per_step"]
                row["sync_sites"] = [
                    f"{site['kind']} {site['per_step']:g}/step at {site['site']}" for site in syncs["adapter"]["sites"]
                ]
            attribution = p.get("attribution")
            if attribution:
                row["placed_share"] = attribution.get("placed_share")
                row["profile_inflation"] = attribution.get("inflation")
        if i is not None and i["status"] == "ok":
            s = i["summary"]
            row["native_instructions"] = s["native_per_step"]
            row["adapter_instructions"] = s["adapter_per_step"]
            row["instructions_difference"] = s["difference"]
            row["instructions_ratio"] = s["ratio"]
            row["instructions_repeatability"] = worst_spread(i)
            row["instructions_runs"] = s["runs"]
            if s.get("layout_spread"):
                row["instructions_layout_spread"] = layout_spread(i)
                row["instructions_layouts"] = s["layouts"]
            row["instructions_estimate_us"] = _estimate_us(p, i)
        row["verdict"] = verdict(p, i)
        rows.append(row)
    return rows


def _order(key: tuple) -> tuple:
    task, options, adapter, mode, precision = key
    return (task, options, precision, adapter != "native", mode != "aligned", adapter)


def sync_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cell, arm, sync kind and call site), with syncs per step; arms with none get one 0 row."""
    rows = []
    for record in sorted(by_kind(records)["paired"], key=lambda r: _order(cell_key(r))):
        if record["status"] != "ok" or not record.get("syncs"):
            continue
        for arm in ("native", "adapter"):
            counted = record["syncs"][arm]
            name = "native" if arm == "native" else record["cell"]["adapter"]
            base = {"label": record["cell"]["label"], "arm": name, "total_per_step": counted["per_step"]}
            if not counted["sites"]:
                rows.append({**base, "kind": None, "site": None, "via": [], "per_step": 0.0})
            for site in counted["sites"]:
                rows.append(
                    {
                        **base,
                        "kind": site["kind"],
                        "site": site["site"],
                        "via": site["via"],
                        "per_step": site["per_step"],
                    }
                )
    return rows


def attribution_rows(records: Iterable[dict[str, Any]], *, groups: bool = False) -> list[dict[str, Any]]:
    """Per cell: the top call sites (or folders, ``groups=True``), the rest, and the unplaced share.

    ``share`` is the fraction of the profiled difference; ``us`` applies it to the unprofiled paired
    total (wall), which is the figure to read. The shares of one cell sum to 1.
    """
    rows = []
    for record in sorted(by_kind(records)["paired"], key=lambda r: _order(cell_key(r))):
        attribution = record.get("attribution") if record["status"] == "ok" else None
        if not attribution or attribution.get("placed_share") is None:
            continue
        label = record["cell"]["label"]
        for entry in _segments(attribution, groups=groups):
            rows.append(
                {
                    "label": label,
                    "site": entry["site"],
                    "group": entry["group"],
                    "share": entry["share"],
                    "us": entry["scaled_us"],
                }
            )
    return rows


def _segments(attribution: dict[str, Any], *, groups: bool) -> list[dict[str, Any]]:
    """Buckets that add up to the profiled difference: named ones, other, spends-less, unplaced."""
    if not groups:
        return [*attribution["top"], attribution["other_extra"], attribution["native_only"], attribution["unplaced"]]
    positive = [g for g in attribution["groups"] if g["profiled_us"] > 0]
    negative = [g for g in attribution["groups"] if g["profiled_us"] < 0]
    shown = positive[:TOP_GROUPS]
    rest = positive[TOP_GROUPS:]
    out = list(shown)
    if rest:
        out.append(_sum_entry(f"{len(rest)} other folders", "other", rest))
    if negative:
        out.append(_sum_entry(f"{len(negative)} folders the adapter spends less in", "fewer", negative))
    out.append(attribution["unplaced"])
    return out


def _sum_entry(label: str, group: str, entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str) -> float | None:
        values = [e[key] for e in entries]
        return None if any(v is None for v in values) else sum(values)

    return {
        "site": label,
        "group": group,
        "profiled_us": total("profiled_us"),
        "share": total("share"),
        "scaled_us": total("scaled_us"),
    }


def instruction_rows(records: Iterable[dict[str, Any]], *, top: int = 8) -> list[dict[str, Any]]:
    """Per instruction cell: each arm per step, the difference, repeatability, and the top extra C functions."""
    rows = []
    for record in sorted(by_kind(records)["instructions"], key=lambda r: _order(cell_key(r))):
        if record["status"] != "ok":
            rows.append({"label": record["cell"]["label"], "status": record["status"], "error": record["error"]})
            continue
        s = record["summary"]
        rows.append(
            {
                "label": record["cell"]["label"],
                "status": "ok",
                "native_per_step": s["native_per_step"],
                "adapter_per_step": s["adapter_per_step"],
                "difference_per_step": s["difference_per_step"],
                "difference": s["difference"],
                "ratio": s["ratio"],
                "runs": s["runs"],
                "repeatability": s["repeatability"],
                "top_functions": [
                    {"function": f["function"], "extra_per_step": f["extra"], "share": f["share"]}
                    for f in s["functions"]["top"][:top]
                ],
                "groups": s["functions"]["groups"][:top],
            }
        )
    return rows


def contamination_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per library: the native loop with it imported minus clean, both clocks, with CIs."""
    rows = []
    for record in sorted(by_kind(records)["contamination"], key=lambda r: r["library"]):
        row: dict[str, Any] = {"library": record["library"], "status": record["status"], "error": record["error"]}
        if record["status"] == "ok":
            for clock in CLOCKS:
                summary = record["summary"][clock]
                row[f"{clock}_clean_us"] = (summary.get("native") or {}).get("value")
                row[f"{clock}_difference_us"] = summary.get("difference")
                row[f"{clock}_ratio"] = summary.get("ratio")
            row["blocks"] = len(record["blocks"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- figure


def attribution_plot(records: Iterable[dict[str, Any]], *, title: str | None = None) -> bytes | None:
    """A stacked bar per adapter × mode: where each paired overhead goes (µs per step, scaled shares).

    Segments above zero are the folders the adapter spends more in (largest first), then "other";
    below zero, the folders it spends less in (the native loop's own frame it replaces); the hatched
    segment is what the profile could not place. The diamond and its bar are the paired total with
    its CI, which the segments add up to.
    """
    import matplotlib  # here, not at the top: the table rows are read without loading matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = []
    for record in sorted(by_kind(records)["paired"], key=lambda r: _order(cell_key(r))):
        attribution = record.get("attribution") if record["status"] == "ok" else None
        if attribution and attribution.get("placed_share") is not None and attribution.get("paired_difference_us"):
            cells.append(record)
    if not cells:
        return None
    # Distinct colours for the folders, none of them grey (grey is "other" and "spends less").
    palette = [c for c in (*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors) if len(set(c)) > 1]
    colors: dict[str, Any] = {}
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(cells) + 3), 4.8))
    labels = []
    legend_done: set[str] = set()
    for index, record in enumerate(cells):
        attribution = record["attribution"]
        up, down = 0.0, 0.0
        for entry in _segments(attribution, groups=True):
            value = entry["scaled_us"] or 0.0
            group = entry["group"]
            name = entry["site"] if group not in ("other", "fewer", "unplaced") else group
            if group == "unplaced":
                color, hatch = "white", "///"
            elif group == "fewer":
                color, hatch = "#bbbbbb", None
            elif group == "other":
                color, hatch = "#888888", None
            else:
                color = colors.setdefault(group, palette[len(colors) % len(palette)])
                hatch = None
            bottom = up if value >= 0 else down
            axes.bar(
                index,
                value,
                bottom=bottom,
                color=color,
                hatch=hatch,
                edgecolor="black",
                linewidth=0.4,
                label=name if name not in legend_done else None,
            )
            legend_done.add(name)
            if value >= 0:
                up += value
            else:
                down += value
        difference = record["summary"]["wall"]["difference"]
        axes.errorbar(
            index,
            difference["value"],
            yerr=[[difference["value"] - difference["low"]], [difference["high"] - difference["value"]]],
            fmt="D",
            color="black",
            markersize=5,
            capsize=4,
        )
        labels.append(f"{record['cell']['adapter']}\n{record['cell']['mode']}")
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_xticks(range(len(cells)), labels, fontsize=8)
    axes.set_ylabel("extra µs per step over native (paired, wall)")
    axes.set_title(title or "Where each adapter's per-step overhead goes (profile shares × paired total)", fontsize=10)
    axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(alpha=0.3, axis="y")
    from reports.plots import png_bytes  # here: reports.plots loads matplotlib, which the rows do not need

    return png_bytes(figure, palette="adaptive")


# --------------------------------------------------------------------------- markdown


def _ci(interval: dict[str, Any] | None, digits: int = 1, sign: bool = True) -> str:
    if not interval:
        return "–"
    form = f"{{:{'+' if sign else ''},.{digits}f}}"
    return f"{form.format(interval['value'])} [{form.format(interval['low'])}, {form.format(interval['high'])}]"


def markdown(records: Sequence[dict[str, Any]], *, title: str, machine: str) -> str:
    """A self-contained Markdown cost report over the records (for ``reports/published/``)."""
    rows = overhead_rows(records)
    lines = [f"# {title}", "", f"Machine: {machine}.", ""]
    lines += [
        "Method: one process per cell alternates the native loop and the adapter on identical jobs, round by "
        "round, in a random order balanced over the rounds; a round's figure per arm is the mean per "
        "steady-state step; the cell's figure is the median of the per-round paired differences with a "
        "bootstrap 95% CI over rounds. Instructions: callgrind, the main thread's instructions in each arm's "
        "steady-state window, one valgrind process per run. The verdict clock is wall time where its CI "
        "half-width meets max(5 µs, 2% of the native step), else instructions (they do not drift with the "
        "machine's load); '≈ µs' converts instructions at native's measured wall rate on the same machine "
        "(an estimate).",
        "",
    ]
    layouts = any(row.get("instructions_layout_spread") is not None for row in rows)
    lines += [
        "## Overhead per step (paired, in one process)",
        "",
        "| cell | verdict clock | wall overhead µs/step [95% CI] | ratio | thread CPU µs/step | instructions/step "
        "native → adapter | Δ instructions/step [CI] | ≈ µs (est.) | runs agree | "
        + ("heap layouts spread | " if layouts else "") + "syncs/step |",
        "| --- " * (11 if layouts else 10) + "|",
    ]
    for row in rows:
        instructions = (
            f"{row['native_instructions']:,.0f} → {row['adapter_instructions']:,.0f}"
            if row.get("native_instructions") is not None
            else "–"
        )
        repeat = row.get("instructions_repeatability")
        estimate = row.get("instructions_estimate_us")
        syncs = row.get("syncs_per_step")
        lines.append(
            f"| {row['label']} | {row['verdict']['clock'] or '–'} | {_ci(row.get('wall_overhead_us'))} | "
            f"{_ci(row.get('wall_ratio'), 3, sign=False)} | {_ci(row.get('thread_overhead_us'))} | {instructions} | "
            f"{_ci(row.get('instructions_difference'), 0)} | {'–' if estimate is None else f'{estimate:+.1f}'} | "
            f"{'–' if repeat is None else f'{repeat:.4%}'} | "
            + (_percent(row.get("instructions_layout_spread")) + " | " if layouts else "")
            + f"{'–' if syncs is None else f'{syncs:g}'} |"
        )
    if layouts:
        lines += ["", "Heap layouts: the instruction pass's runs were given " + LAYOUTS_NOTE]
    lines += ["", "Verdict clock per cell:", ""]
    lines += [f"- {row['label']}: {row['verdict']['clock'] or '–'} ({row['verdict']['reason']})" for row in rows]
    syncs = [r for r in sync_rows(records) if r["kind"] is not None]
    lines += ["", "## Host syncs per step (predicted device→host reads, with call sites)", ""]
    if syncs:
        lines += ["| cell | arm | kind | per step | call site | via |", "| --- | --- | --- | --- | --- | --- |"]
        for row in syncs:
            via = " ← ".join(row["via"][:2])
            lines.append(
                f"| {row['label']} | {row['arm']} | {row['kind']} | {row['per_step']:g} | `{row['site']}` | {via} |"
            )
    else:
        lines.append("No cell makes a host sync in its steady-state steps.")
    attribution = attribution_rows(records, groups=True)
    if attribution:
        lines += ["", "## Where the overhead goes (profile shares × paired wall total)", ""]
        lines += ["| cell | folder | share | µs/step |", "| --- | --- | --- | --- |"]
        for row in attribution:
            share = "–" if row["share"] is None else f"{row['share']:.1%}"
            us = "–" if row["us"] is None else f"{row['us']:+.1f}"
            lines.append(f"| {row['label']} | {row['site']} | {share} | {us} |")
    contamination = contamination_rows(records)
    if contamination:
        lines += ["", "## Import contamination (native loop, library imported − clean process)", ""]
        lines += ["| library | wall µs/step [CI] | thread µs/step [CI] | blocks |", "| --- | --- | --- | --- |"]
        for row in contamination:
            if row["status"] != "ok":
                lines.append(f"| {row['library']} | {row['status']}: {row['error']} | | |")
                continue
            lines.append(
                f"| {row['library']} | {_ci(row['wall_difference_us'])} | {_ci(row['thread_difference_us'])} | "
                f"{row['blocks']} |"
            )
    instructions = instruction_rows(records)
    if instructions:
        lines += ["", "## Instructions: the extra C-level functions (callgrind, main thread)", ""]
        for row in instructions:
            if row["status"] != "ok":
                lines.append(f"- {row['label']}: {row['status']}: {row['error']}")
                continue
            top = "; ".join(
                f"`{f['function']}` {f['extra_per_step']:+,.0f}"
                for f in row["top_functions"][:5]
                if f["extra_per_step"]
            )
            lines.append(f"- {row['label']}: {row['difference_per_step']:+,.0f} instructions/step: {top}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- a published folder


def report_id(records: Sequence[dict[str, Any]]) -> str:
    """12 hex digits over the records' content: the same records, the same folder name."""
    text = json.dumps(sorted((publishable(r) for r in records), key=key_of), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_report(records: Sequence[dict[str, Any]], folder, *, title: str, machine: str) -> dict[str, Any]:
    """``report.md``, ``records.json`` (every record, paths stripped) and ``attribution.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = sorted((publishable(r) for r in records), key=key_of)
    text = json.dumps(clean, indent=1, sort_keys=True)
    if str(REPO_ROOT) in text:
        raise ValueError("a cost record still holds a path of this machine; not publishing it")
    written = {"records.json": folder / "records.json", "report.md": folder / "report.md"}
    written["records.json"].write_text(text + "\n", encoding="utf-8")
    markdown_text = markdown(clean, title=title, machine=machine)
    png = attribution_plot(clean)
    if png is not None:
        written["attribution.png"] = folder / "attribution.png"
        written["attribution.png"].write_bytes(png)
        markdown_text += "\n![Where each adapter's overhead goes](attribution.png)\n"
    written["report.md"].write_text(markdown_text, encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m reports.cost RESULTS_DIR --out FOLDER --machine TEXT``: a cost report from record files."""
    parser = argparse.ArgumentParser(prog="python -m reports.cost", description=main.__doc__.split(":")[0])
    parser.add_argument("results", nargs="+", type=Path, help="folders of bakeoff.cost/1 records")
    parser.add_argument("--out", type=Path, required=True, help="output folder (its name gets -<report id> added)")
    parser.add_argument("--machine", required=True, help="the machine the figures were measured on, in words")
    parser.add_argument("--title", default="Per-step cost, paired in one process")
    args = parser.parse_args(argv)
    records: list[dict[str, Any]] = []
    for folder in args.results:
        found, problems = read_folder(folder)
        for problem in problems:
            print(f"python -m reports.cost: skipping {problem}", file=sys.stderr)
        records += found
    if not records:
        print(f"python -m reports.cost: error: no cost records in {', '.join(map(str, args.results))}", file=sys.stderr)
        return 2
    folder = args.out.with_name(f"{args.out.name}-{report_id(records)}")
    written = write_report(records, folder, title=args.title, machine=args.machine)
    print(f"cost report: {len(records)} records -> {', '.join(str(path) for path in written.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# --------------------------------------------------------------------------- tables of the suite report


def paired_table_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The suite report's ``paired`` table: one row per measured cell, the verdict clock's figure first."""
    rows = []
    for row in overhead_rows(records):
        wall, thread = row.get("wall_overhead_us") or {}, row.get("thread_overhead_us") or {}
        instructions = row.get("instructions_difference") or {}
        ratio, target = row.get("wall_ratio") or {}, row.get("wall_target") or {}
        options = ",".join(f"{k}={v}" for k, v in sorted(row["options"].items()))
        rows.append({
            "cell": row["label"],
            "task": row["task"] + (f"[{options}]" if options else ""),
            "adapter": row["adapter"],
            "mode": row["mode"],
            "precision": row["precision"],
            "status": row["status"],
            # The µs figure is always a clock's: the paired wall difference and its CI. Where that CI
            # misses the target the instruction count decides (``clock``); its µs conversion at
            # native's rate is an estimate beside it, with no CI of its own (the rate is assumed).
            "overhead_us": wall.get("value"),
            "overhead_low": wall.get("low"),
            "overhead_high": wall.get("high"),
            "instructions_delta": instructions.get("value"),
            "instructions_delta_low": instructions.get("low"),
            "instructions_delta_high": instructions.get("high"),
            "instructions_estimate_us": row.get("instructions_estimate_us"),
            "clock": (row.get("verdict") or {}).get("clock"),
            "clock_reason": (row.get("verdict") or {}).get("reason"),
            "native_us": row.get("wall_native_us"),
            "wall_us": wall.get("value"),
            "wall_low": wall.get("low"),
            "wall_high": wall.get("high"),
            "wall_target_met": target.get("met"),
            "thread_us": thread.get("value"),
            "thread_low": thread.get("low"),
            "thread_high": thread.get("high"),
            "ratio": ratio.get("value"),
            "ratio_low": ratio.get("low"),
            "ratio_high": ratio.get("high"),
            "rounds": row.get("rounds"),
            "instructions_ratio": (row.get("instructions_ratio") or {}).get("value"),
            "instructions_agree_pct": (None if row.get("instructions_repeatability") is None
                                       else 100 * row["instructions_repeatability"]),
            **({"instructions_layouts_pct": 100 * row["instructions_layout_spread"]}
               if row.get("instructions_layout_spread") is not None else {}),
            "syncs_per_step": row.get("syncs_per_step"),
            "placed_share": row.get("placed_share"),
            "error": row.get("error"),
        })
    return rows


def syncs_table_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The suite report's ``syncs`` table: per measured cell, the adapter's host syncs per step and where."""
    rows = []
    for record in sorted(by_kind(records)["paired"], key=lambda r: _order(cell_key(r))):
        if record["status"] != "ok" or not record.get("syncs"):
            continue
        cell, adapter, native = record["cell"], record["syncs"]["adapter"], record["syncs"]["native"]
        sites = sorted(adapter["sites"], key=lambda s: -s["per_step"])
        rows.append({
            "cell": cell["label"],
            "adapter": cell["adapter"],
            "mode": cell["mode"],
            "precision": cell["precision"],
            "syncs_per_step": adapter["per_step"],
            "native_syncs_per_step": native["per_step"],
            "by_kind": ", ".join(f"{kind} {n:g}" for kind, n in sorted(adapter.get("by_kind", {}).items())) or "none",
            "top_site": f"{sites[0]['kind']} at {sites[0]['site']}" if sites else None,
            "sites": [f"{s['kind']} {s['per_step']:g}/step at {s['site']}" for s in sites],
        })
    return rows


def publishable_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as a report's raw data keeps them: no machine paths, in a stable order."""
    return sorted((publishable(r) for r in records), key=key_of)
