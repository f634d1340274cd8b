"""The benchmark gate: compare a pytest-benchmark run against the committed baseline.

    python -m harness.benchgate BASELINE.json CANDIDATE.json [--threshold 0.25] [--json OUT]

Uses the per-step times each benchmark stored in ``extra_info["step_us"]`` (one list per
round) and compares every adapter's ratio to native *within each file*, so a slower or busier
machine does not read as a regression. Exit 1 on regression, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from harness.compare import compare_cells, format_table, write_json

REFERENCE = ("native", "aligned")


def load_cells(path: Path) -> dict[tuple[str, str], list[list[float]]]:
    document = json.loads(Path(path).read_text())
    cells = {}
    for bench in document["benchmarks"]:
        match = re.search(r"\[(.+)-(aligned|defaults)\]$", bench["name"])
        steps = bench.get("extra_info", {}).get("step_us")
        if match and steps:
            cells[(match.group(1), match.group(2))] = steps
    if REFERENCE not in cells:
        raise ValueError(f"{path}: no native benchmark to normalise against")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.benchgate", description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.25,
        help="allowed growth of an adapter's per-step ratio to native (default 0.25 = 25%%)",
    )
    parser.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        baseline, candidate = load_cells(args.baseline), load_cells(args.candidate)
    except (OSError, ValueError, KeyError) as error:
        print(f"benchgate: error: {error}", file=sys.stderr)
        return 2
    comparison = compare_cells(
        baseline,
        candidate,
        reference_of=lambda _: REFERENCE,
        describe=lambda k: f"{k[0]} {k[1]}",
        threshold=args.threshold,
    )
    print(format_table(comparison))
    if args.json:
        write_json(comparison, args.json)
    return 1 if comparison["regressions"] else 0


if __name__ == "__main__":
    sys.exit(main())
