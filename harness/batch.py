"""Several single-process specs in one worker process: the imports and CUDA start-up are paid once.

``python -m harness.batch --specs FILE --results-dir DIR`` runs each spec of a JSON list with the
same worker code as ``harness.worker`` (``worker.run``), one after the other, and writes each
result as soon as it is done, so a crash loses only the spec that was running. Specs whose
result file already exists are skipped (resume).

What this gives up: start-up time and peak memory are the shared process's, not a fresh one's.
Each result says so (``timing.process``), and nothing that needs isolation should come from it:
the GPU check uses batches for the many alignment cells and fresh processes for the throughput
runs it reports. :func:`run_batch` is the orchestrator side: it relaunches the batch after a
crash with the specs that are left, recording the one that was running as failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT
from harness.spec import Spec


def _terminate(signum, frame) -> None:
    raise SystemExit(f"terminated by {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.batch", description="Run several specs in one process.")
    parser.add_argument("--specs", required=True, help="JSON file: a list of spec tables")
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--save-weights", action="store_true")
    args = parser.parse_args(argv)

    from harness.process import die_with_parent, watch_orchestrator

    die_with_parent()
    watch_orchestrator()
    signal.signal(signal.SIGTERM, _terminate)
    specs = [Spec.from_dict(table) for table in json.loads(Path(args.specs).read_text())]
    results = run_here(
        specs,
        Path(args.results_dir),
        warmup=args.warmup,
        save_weights=args.save_weights,
        eval_every=args.eval_every,
        mode="batch",
    )
    return 3 if any(result["status"] == "failed" for result in results) else 0


def run_here(
    specs: list[Spec],
    results_dir: Path,
    *,
    warmup: int = 5,
    save_weights: bool = True,
    eval_every: int = 0,
    mode: str = "inline",
    log=print,
) -> list[dict[str, Any]]:
    """Run single-process specs one after the other in this process, each result written when done.

    A spec whose result file exists is read back, not rerun. ``mode`` is what ``timing.process``
    records ("batch" in a batch worker, "inline" in the calling process).
    """
    import torch

    from harness import worker
    from harness.result import read_result, result_path, write_result

    results = []
    for position, spec in enumerate(specs, start=1):
        path = result_path(results_dir, spec)
        if path.exists():
            results.append(read_result(path))
            continue
        if spec.world_size != 1 or spec.ddp:
            raise ValueError(f"{spec.label}: a batch runs single-process specs only")
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        log(f"[{mode} {position}/{len(specs)}] {spec.label}")
        result = worker.run(
            spec,
            results_dir,
            launch_wall_ns=time.time_ns(),
            warmup=warmup,
            save_weights=save_weights,
            eval_every=eval_every,
        )
        result.pop("_rank", None)
        result.setdefault("timing", {})["process"] = {"mode": mode, "position": position, "of": len(specs)}
        write_result(path, result)
        results.append(result)
    return results


def run_batch(
    specs: list[Spec],
    results_dir: Path,
    *,
    python: str = sys.executable,
    timeout_s: float,
    warmup: int = 5,
    save_weights: bool = True,
    env: dict[str, str] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Run ``specs`` through batch processes until each has a result (or the time is up).

    A batch that dies mid-way (a crash, a signal) is started again with the specs still
    missing; the spec it was running gets a ``failed`` result naming the death. A batch still
    running at ``timeout_s`` is stopped, and every spec left without a result is failed with
    "timed out".
    """
    from harness.result import base_result, read_result, result_path, write_result
    from harness.runner import _kill_group, _worker_env

    results_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s

    def missing() -> list[Spec]:
        return [spec for spec in specs if not result_path(results_dir, spec).exists()]

    def fail(spec: Spec, reason: str, tail: str) -> None:
        result = base_result(spec, status="failed", error=reason)
        result["output_tail"] = tail[-3000:]
        write_result(result_path(results_dir, spec), result)

    while missing() and time.monotonic() < deadline:
        left = missing()
        with tempfile.TemporaryDirectory(prefix="bakeoff-batch-") as scratch:
            spec_file = Path(scratch) / "specs.json"
            spec_file.write_text(json.dumps([spec.to_dict() for spec in left]))
            output = Path(scratch) / "output.txt"
            command = [
                python,
                "-m",
                "harness.batch",
                "--specs",
                str(spec_file),
                "--results-dir",
                str(results_dir),
                "--warmup",
                str(warmup),
            ]
            if save_weights:
                command.append("--save-weights")
            with open(output, "w+b") as handle:
                process = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env={**_worker_env(), **(env or {})},
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                timed_out = False
                try:
                    process.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
                _kill_group(process)
                handle.seek(0)
                tail = handle.read()[-6000:].decode("utf-8", "replace")
        still = missing()
        if timed_out:
            for spec in still:
                fail(spec, f"timed out: the batch ran out of its {timeout_s:.0f} s", tail)
            break
        if still:  # specs run in order, so the first without a result is the one the batch died in
            fail(still[0], f"the batch process died running it (exit {process.returncode})", tail)
            log(f"  batch died on {still[0].label}; restarting with {len(still) - 1} specs left")
    for spec in missing():
        fail(spec, "not run: the batch's time was up", "")
    return [read_result(result_path(results_dir, spec)) for spec in specs]


if __name__ == "__main__":
    sys.exit(main())
