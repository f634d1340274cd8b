"""Faults survived with nothing lost (issue 9): dead ranks, OOM, library-callback exceptions,
a killed orchestrator, and two bench processes on one results folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.result import read_result
from harness.runner import RunOptions, run_spec
from harness.spec import Spec
from harness.worker import run_inline
from tests.conftest import REPO_ROOT, small_spec
from tests.harness.test_runner import _is_worker_for

pytestmark = pytest.mark.usefixtures("plugin_env")


def no_workers_left(results_dir: Path, wait_s: float = 10.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not [p for p in os.listdir("/proc") if p.isdigit() and _is_worker_for(p, results_dir)]:
            return True
        time.sleep(0.2)
    return False


def test_a_killed_ddp_rank_fails_the_run_with_rank0s_partial_trajectory(tmp_path):
    spec = small_spec(adapter="fault-kill-rank1", world_size=2, steps=8)
    result = run_spec(spec, RunOptions(results_dir=tmp_path, timeout_s=120, save_weights=False))
    assert result["status"] == "failed"
    # Rank 0 learns of the death from gloo's transport (the peer's socket closed or reset) or
    # from torchrun's SIGTERM, whichever comes first; either way rank 0 writes what it recorded.
    assert "gloo/transport/tcp" in result["error"] or "terminated by SIGTERM" in result["error"]
    assert 2 <= len(result["trajectory"]["losses"]) <= 3
    assert no_workers_left(tmp_path)


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("fault-oom", "OutOfMemoryError: simulated: tried to allocate 80.00 GiB"),
        ("fault-lightning-callback", "planted failure inside a Lightning callback"),
    ],
)
def test_oom_and_callback_exceptions_become_failed_results_with_partial_trajectory(inline, adapter, message):
    result = inline(small_spec(adapter=adapter, steps=6))
    assert result["status"] == "failed"
    assert message in result["error"]
    assert len(result["trajectory"]["losses"]) == 2


def suite_file(tmp_path: Path, steps: int = 30) -> Path:
    path = tmp_path / "faults.toml"
    path.write_text(
        'name = "faults"\nwarmup = 1\n[[runs]]\ntask = "scaling"\nadapter = "native"\n'
        f"steps = {steps}\nbatch_size = 16\nseed = [0, 1, 2]\n"
    )
    return path


def bench(tmp_path: Path, results: Path, **kwargs) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "harness",
        "bench",
        "--suite-file",
        str(suite_file(tmp_path)),
        "--device",
        "cpu",
        "--results-dir",
        str(results),
        "--no-weights",
        "--no-tracking",
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )


def reference_digests(tmp_path: Path) -> dict[str, str]:
    """The same three specs run without interruption (in-process: same math, same digests)."""
    digests = {}
    for seed in range(3):
        spec = Spec(task="scaling", adapter="native", steps=30, batch_size=16, lr=0.05, seed=seed)
        digests[spec.spec_id] = run_inline(spec, tmp_path / "reference", save_weights=False)["weights_digest"]
    return digests


def test_orchestrator_killed_mid_suite_resumes_without_rerun_or_loss(tmp_path):
    results = tmp_path / "results"
    first = bench(tmp_path, results)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(results.glob("*.json"))) < 1:
        time.sleep(0.2)
    finished_before = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert finished_before, "no spec finished within 120 s"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert no_workers_left(results), "a worker outlived its killed orchestrator"

    second = bench(tmp_path, results)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    for name, mtime in finished_before.items():  # finished specs were not rerun
        assert (results / name).stat().st_mtime_ns == mtime
    assert output.count("(done earlier)") == len(finished_before)
    final = {p.stem: read_result(p) for p in results.glob("*.json")}
    assert {k: r["weights_digest"] for k, r in final.items()} == reference_digests(tmp_path)
    assert not list(results.glob("*.claim"))


def test_two_bench_processes_on_one_folder_run_each_spec_once(tmp_path):
    results = tmp_path / "results"
    a, b = bench(tmp_path, results), bench(tmp_path, results)
    out_a, _ = a.communicate(timeout=400)
    out_b, _ = b.communicate(timeout=400)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    ran = [line for line in (out_a + out_b).splitlines() if line.startswith("[") and "(done earlier)" not in line]
    assert len(ran) == 3, out_a + out_b  # each of the three specs ran in exactly one process
    files = sorted(results.glob("*.json"))
    assert len(files) == 3
    for path in files:
        assert json.loads(path.read_text())["status"] == "ok"
    assert not list(results.glob("*.claim"))
