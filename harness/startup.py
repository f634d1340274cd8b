"""Cold start-up per adapter, from result files: ``python -m harness.startup [RESULTS_DIR]``.

Reads the results of fresh-process runs (``bakeoff bench --suite startup`` writes them to
``results/startup``) and prints, per adapter and mode, the start-up a user waits for —
``startup_s``, launch to the end of the first step — split into ``launch_s`` (interpreter, torch
and the harness), the library's import (``timing.adapter_import_s``) and the rest of
``library_startup_s`` (building the job, the library's set-up, the first step). Medians over the
repeats, with the range. Runs forked from the zygote have no ``startup_s`` and are left out.
Torch-free.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("results") / "startup"


def read_results(folder: Path) -> list[dict[str, Any]]:
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and str(result.get("schema", "")).startswith("bakeoff.result/"):
            results.append(result)
    return results


def rows(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (adapter, mode) over the finished fresh-process runs, native first."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for result in results:
        summary = result.get("summary", {})
        if result.get("status") != "ok" or "startup_s" not in summary:
            continue
        spec = result["spec"]
        groups.setdefault((spec["adapter"], spec.get("mode", "aligned")), []).append(result)
    table = []
    for (adapter, mode), runs in sorted(groups.items(), key=lambda item: (item[0][0] != "native", item[0])):
        cold = [r["summary"]["startup_s"] for r in runs]
        imports = [r.get("timing", {}).get("adapter_import_s", 0.0) for r in runs]
        table.append(
            {
                "adapter": adapter,
                "mode": mode,
                "runs": len(runs),
                "startup_s": statistics.median(cold),
                "startup_min_s": min(cold),
                "startup_max_s": max(cold),
                "launch_s": statistics.median(r["summary"]["launch_s"] for r in runs),
                "library_import_s": statistics.median(imports),
                "library_startup_s": statistics.median(r["summary"]["library_startup_s"] for r in runs),
            }
        )
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    header = (
        f"{'adapter':16} {'mode':9} {'runs':>4}  {'start-up s (min-max)':>22}  {'launch s':>8}  "
        f"{'import s':>8}  {'library s':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in table:
        spread = f"{row['startup_s']:.2f} ({row['startup_min_s']:.2f}-{row['startup_max_s']:.2f})"
        lines.append(
            f"{row['adapter']:16} {row['mode']:9} {row['runs']:>4}  {spread:>22}  {row['launch_s']:>8.2f}  "
            f"{row['library_import_s']:>8.2f}  {row['library_startup_s']:>9.2f}"
        )
    lines.append(
        "start-up = launch to the end of the first step in a fresh process = launch (interpreter, torch, harness) "
        "+ library (its import, building the job, its set-up, one step); medians over the runs"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.startup", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", nargs="?", type=Path, default=DEFAULT_DIR,
                        help=f"folder of result files (default: {DEFAULT_DIR})")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        print(f"harness.startup: error: no such folder: {args.results_dir} "
              "(run `bakeoff bench --suite startup` first)", file=sys.stderr)
        return 2
    table = rows(read_results(args.results_dir))
    if not table:
        print(f"harness.startup: error: no finished fresh-process runs in {args.results_dir}", file=sys.stderr)
        return 2
    print(json.dumps(table, indent=1) if args.json else format_table(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
