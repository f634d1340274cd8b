"""The orchestrator side of a run: one fresh worker process per spec, timeouts, resume.

A spec whose result file exists is skipped, so an interrupted suite resumes where it stopped.
Whatever happens to a worker (exception, crash, signal, hang), the spec ends with a result
file and the suite goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT
from harness.result import ResultError, base_result, read_result, result_path, write_result
from harness.spec import Spec

DEFAULT_TIMEOUT_S = 600.0
STDERR_TAIL = 3000


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    results_dir: Path
    timeout_s: float = DEFAULT_TIMEOUT_S
    warmup: int = 5
    """Steps excluded from step-time statistics."""
    save_weights: bool = True
    python: str = sys.executable
    retry_failed: bool = False
    """On resume, run again specs whose existing result is ``failed``."""


def worker_command(spec: Spec, spec_file: Path, options: RunOptions, launch_wall_ns: int) -> list[str]:
    worker_args = [
        "-m", "harness.worker",
        "--spec", str(spec_file),
        "--results-dir", str(options.results_dir),
        "--launch-wall-ns", str(launch_wall_ns),
        "--warmup", str(options.warmup),
    ]
    if options.save_weights:
        worker_args.append("--save-weights")
    if spec.world_size == 1:
        return [options.python, *worker_args]
    # torchrun's --standalone picks a free local port through the c10d rendezvous.
    return [
        options.python, "-m", "torch.distributed.run",
        "--standalone", "--nnodes", "1", "--nproc-per-node", str(spec.world_size),
        "--max-restarts", "0", "--monitor-interval", "0.5",
        *worker_args,
    ]


def _kill_group(process: subprocess.Popen) -> None:
    """Stop the worker and everything it started (torchrun's ranks) by process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_spec(spec: Spec, options: RunOptions) -> dict[str, Any]:
    """Run one spec in a fresh process and return its result (also on disk)."""
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(options.results_dir, spec)
    with tempfile.TemporaryDirectory(prefix="bakeoff-") as scratch:
        spec_file = Path(scratch) / "spec.json"
        spec_file.write_text(spec.canonical_json())
        stderr_file = Path(scratch) / "stderr.txt"
        launch_wall_ns = time.time_ns()
        with open(stderr_file, "w+b") as stderr:
            process = subprocess.Popen(
                worker_command(spec, spec_file, options, launch_wall_ns),
                cwd=REPO_ROOT,
                env=_worker_env(),
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout kills every rank
            )
            timed_out = False
            try:
                process.wait(timeout=options.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process)  # also reaps anything a finished worker left behind
            stderr.seek(0)
            output_tail = stderr.read()[-STDERR_TAIL:].decode("utf-8", "replace")
        worker_result = _read_if_valid(path, newer_than_ns=launch_wall_ns)
        if timed_out:
            return _write_failure(
                spec, options, path, f"timed out after {options.timeout_s:g} s", output_tail, launch_wall_ns
            )
        if worker_result is not None:
            return worker_result
        code = process.returncode
        reason = f"killed by signal {signal.Signals(-code).name}" if code and code < 0 else f"worker exited with code {code}"
        return _write_failure(spec, options, path, f"{reason} without a result", output_tail, launch_wall_ns)


def _read_if_valid(path: Path, *, newer_than_ns: int) -> dict[str, Any] | None:
    if not path.exists() or path.stat().st_mtime_ns < newer_than_ns - 1_000_000_000:
        return None
    try:
        return read_result(path)
    except ResultError:
        return None


def _write_failure(
    spec: Spec, options: RunOptions, path: Path, reason: str, output_tail: str, launch_wall_ns: int
) -> dict[str, Any]:
    result = base_result(spec, status="failed", error=reason)
    result["output_tail"] = output_tail
    result["summary"]["wall_s"] = (time.time_ns() - launch_wall_ns) / 1e9
    write_result(path, result)
    return result


def existing_result(spec: Spec, results_dir: Path) -> dict[str, Any] | None:
    path = result_path(results_dir, spec)
    if not path.exists():
        return None
    try:
        return read_result(path)
    except ResultError:
        return None  # a damaged file is rerun, not trusted


Progress = Callable[[int, int, Spec, dict[str, Any], bool, float], None]


def run_suite(specs: Iterable[Spec], options: RunOptions, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run every spec (skipping those already done) and return all results in order."""
    specs = list(specs)
    results = []
    for index, spec in enumerate(specs, start=1):
        started = time.perf_counter()
        done = existing_result(spec, options.results_dir)
        skipped = done is not None and not (options.retry_failed and done["status"] == "failed")
        result = done if skipped else run_spec(spec, options)
        results.append(result)
        if progress:
            progress(index, len(specs), spec, result, skipped, time.perf_counter() - started)
    return results


def dump_spec(spec: Spec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)
