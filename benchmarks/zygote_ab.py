"""A/B of the zygote against a fresh process per spec over a whole suite: same numbers, less time.

    .venv/bin/python benchmarks/zygote_ab.py --suite quick --out /tmp/zygote-ab

Runs ``bakeoff bench --no-tracking`` twice, one after the other (never both at once: they would
time each other): forked from the zygote into OUT/zygote, then ``--no-zygote`` into OUT/fresh
(``--order fresh-first`` swaps them). Then, spec by spec: status, error, weights digest, every
step's loss, the validation figures, the data digest and the parity verdict against native
computed in each folder must be identical. Prints each run's wall time and the start-up figures,
and exits 1 if anything differs. ``--compare-only`` compares two folders that already exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def run_bench(suite: str, device: str, folder: Path, *, zygote: bool) -> float:
    command = [sys.executable, "-m", "harness", "bench", "--suite", suite, "--device", device,
               "--results-dir", str(folder), "--no-tracking"]
    if not zygote:
        command.append("--no-zygote")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=env)
    seconds = time.perf_counter() - started
    print(f"exit {done.returncode} after {seconds:.0f} s", flush=True)
    return seconds


def load(folder: Path) -> dict[str, Any]:
    """spec_id → Result of every valid result file in ``folder``."""
    from harness.ingest import read_result_dir

    results, problems = read_result_dir(folder)
    for problem in problems:
        print(f"warning: {folder}: {problem}")
    return {r.spec_id: r for r in results}


def verdicts(folder: Path) -> dict[str, Any]:
    """spec_id → parity (every partner's verdict) computed from the folder alone, weights included."""
    from harness import parity

    pool = list(load(folder).values())
    return parity.stage(pool, pool, weights=parity.weights_from([folder]))


def fingerprint(result: Any, verdict: Any) -> dict[str, Any]:
    summary, trajectory = result.summary, result.trajectory
    return {
        "status": result.status,
        "error": result.error if result.status == "unsupported" else None,
        "weights_digest": result.weights_digest,
        "losses": trajectory.get("losses"),
        "evals": [{k: v for k, v in e.items() if k != "eval_s"} for e in trajectory.get("evals", [])],
        "eval_loss": summary.get("eval_loss"),
        "eval_metric": summary.get("eval_metric"),
        "data_digest": result.task.get("data_digest"),
        "parity": None if verdict is None else verdict.to_json(),
    }


def compare(zygote_dir: Path, fresh_dir: Path) -> tuple[int, list[str]]:
    forked, fresh = load(zygote_dir), load(fresh_dir)
    judged = {"zygote": verdicts(zygote_dir), "fresh": verdicts(fresh_dir)}
    differences = []
    for spec_id in sorted(set(forked) | set(fresh)):
        if spec_id not in forked or spec_id not in fresh:
            differences.append(f"{spec_id}: only in {'fresh' if spec_id in fresh else 'zygote'}")
            continue
        a = fingerprint(forked[spec_id], judged["zygote"].get(spec_id))
        b = fingerprint(fresh[spec_id], judged["fresh"].get(spec_id))
        for key in a:
            if a[key] != b[key]:
                label = forked[spec_id].spec.label
                differences.append(f"{spec_id} {label}: {key} differs: zygote {a[key]!r:.200} / fresh {b[key]!r:.200}")
    return len(set(forked) & set(fresh)), differences


def startup_figures(folder: Path) -> str:
    results = [r for r in load(folder).values() if r.status == "ok"]
    parts = []
    for key in ("launch_s", "library_startup_s", "startup_s", "wall_s"):
        values = [r.summary[key] for r in results if key in r.summary]
        if values:
            parts.append(f"{key} median {statistics.median(values):.2f} (n={len(values)}, sum {sum(values):.0f})")
    launches = sorted({r.extra.get("timing", {}).get("launch", "?") for r in results})
    return f"launch {'/'.join(launches)}; " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two result folders")
    parser.add_argument("--order", choices=("zygote-first", "fresh-first"), default="zygote-first")
    parser.add_argument("--compare-only", action="store_true", help="compare OUT/zygote and OUT/fresh as they are")
    args = parser.parse_args(argv)
    zygote_dir, fresh_dir = args.out / "zygote", args.out / "fresh"
    walls = {}
    if not args.compare_only:
        for launch in (("zygote", "fresh") if args.order == "zygote-first" else ("fresh", "zygote")):
            folder = zygote_dir if launch == "zygote" else fresh_dir
            walls[launch] = run_bench(args.suite, args.device, folder, zygote=launch == "zygote")
    compared, differences = compare(zygote_dir, fresh_dir)
    for launch, folder in (("zygote", zygote_dir), ("fresh", fresh_dir)):
        wall = f"bench wall {walls[launch]:.0f} s; " if launch in walls else ""
        print(f"{launch:6}: {wall}{startup_figures(folder)}")
    print(f"load average now: {os.getloadavg()}")
    summary = {"specs_compared": compared, "differences": len(differences), "walls_s": walls}
    print(json.dumps(summary))
    for line in differences:
        print("DIFFERENT " + line)
    if differences:
        print(f"{len(differences)} differences over {compared} specs")
        return 1
    print(f"identical: {compared} specs (status, weights digest, every loss, validation, data digest, parity verdict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
