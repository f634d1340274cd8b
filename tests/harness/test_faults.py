"""Faults survived with nothing lost: dead ranks, OOM, library-callback exceptions,
a killed orchestrator, and two bench processes on one results folder.

Every `failed` result of a fault is also logged to MLflow and read back as a FAILED run with the
reason as a tag and the partial trajectory as metrics (``assert_failed_run``), into one SQLite store
for the module. The worker killed by SIGKILL, the NaN loss and the hang are run here once more for
that (tests/harness/test_runner.py checks their results on disk).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ingest, payload, store
from harness.result import read_result
from harness.runner import RunOptions, run_spec, run_suite
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


@pytest.fixture(scope="module")
def fault_store(tmp_path_factory) -> str:
    """One SQLite store for the module's FAILED runs (creating a store's schema costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('fault-store') / 'mlflow.db'}"


def assert_failed_run(result: dict, results_dir: Path, uri: str) -> None:
    """Logging the result gives one FAILED MLflow run: the reason as tag and note, the partial trajectory as metrics."""
    assert result["status"] == "failed"
    suite = f"fault-{result['spec']['adapter']}-{result['spec_id'][:8]}"
    logged = ingest.log_results([result], results_dir=results_dir, suite=suite, uri=uri, command="ingest")
    (run_id,) = logged.logged.values()
    mlflow_client = store.client(uri)
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["bakeoff.status"] == "failed" and tags["bakeoff.kind"] == "result"
    assert tags["bakeoff.error"] == result["error"] and result["error"]
    assert tags["mlflow.note.content"] == f"failed: {result['error']}"
    assert run.data.params == payload.params_of(result["spec"])
    losses = result["trajectory"]["losses"]
    history = sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run_id, "loss"))
    # Every recorded loss, NaN included (MLflow stores it as NaN); nothing beyond what the worker recorded.
    assert [step for step, _ in history] == [i for i, loss in enumerate(losses) if loss is not None]
    for (_, value), loss in zip(history, [v for v in losses if v is not None]):
        assert value == loss or (math.isnan(value) and math.isnan(loss))
    steps = mlflow_client.get_metric_history(run_id, "step_time_us")
    assert len(steps) == len(result["trajectory"]["step_end_ns"])


def test_a_killed_ddp_rank_fails_the_run_with_rank0s_partial_trajectory(tmp_path, fault_store):
    spec = small_spec(adapter="fault-kill-rank1", world_size=2, steps=8)
    result = run_spec(spec, RunOptions(results_dir=tmp_path, timeout_s=120, save_weights=False))
    assert result["status"] == "failed"
    # Rank 0 learns of the death from gloo's transport (the peer's socket closed or reset) or
    # from torchrun's SIGTERM, whichever comes first; either way rank 0 writes what it recorded.
    assert "gloo/transport/tcp" in result["error"] or "terminated by SIGTERM" in result["error"]
    assert 2 <= len(result["trajectory"]["losses"]) <= 3
    assert no_workers_left(tmp_path)
    assert_failed_run(read_result(tmp_path / f"{spec.spec_id}.json"), tmp_path, fault_store)


def test_a_sigterm_while_a_failure_is_written_up_does_not_lose_the_result(inline, monkeypatch):
    """The race behind a killed DDP peer: gloo's error reaches rank 0 first and torchrun's SIGTERM
    lands while rank 0 handles it. The result that error makes must still be the one written."""
    from harness import worker

    capture = worker.environment.capture

    def capture_then_sigterm(*args, **kwargs):  # called in the worker's finally, after the failure
        os.kill(os.getpid(), signal.SIGTERM)
        return capture(*args, **kwargs)

    monkeypatch.setattr(worker.environment, "capture", capture_then_sigterm)
    previous = signal.signal(signal.SIGTERM, worker._terminate)  # what the worker's main installs
    try:
        spec = small_spec(adapter="fault-oom", steps=6)
        result = inline(spec)
        # Outside a write-up (training), the same handler still raises: that is the timeout's stop.
        worker._write_up(False)
        with pytest.raises(worker.Terminated, match="terminated by SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the handler runs at the next bytecode boundary, at the latest here
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result["status"] == "failed"
    assert "OutOfMemoryError: simulated" in result["error"]
    assert len(result["trajectory"]["losses"]) == 2
    assert read_result(inline.results_dir / f"{spec.spec_id}.json")["error"] == result["error"]


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("fault-oom", "OutOfMemoryError: simulated: tried to allocate 80.00 GiB"),
        ("fault-lightning-callback", "planted failure inside a Lightning callback"),
    ],
)
def test_oom_and_callback_exceptions_become_failed_results_with_partial_trajectory(
    inline, adapter, message, fault_store
):
    spec = small_spec(adapter=adapter, steps=6)
    result = inline(spec)
    assert result["status"] == "failed"
    assert message in result["error"]
    assert len(result["trajectory"]["losses"]) == 2
    assert_failed_run(read_result(inline.results_dir / f"{spec.spec_id}.json"), inline.results_dir, fault_store)


def test_killed_hung_and_nan_workers_become_failed_mlflow_runs(tmp_path, inline, fault_store):
    """SIGKILL and a hang in real worker processes (the hang stopped by the timeout), NaN in-process."""
    hang_timeout_s = 30  # the worker reaches its hang (step 2) in about 5 s quiet; margin for a loaded -n 2 run
    specs = [small_spec(adapter="fault-kill", steps=6), small_spec(adapter="fault-hang", steps=6)]
    killed, hung = run_suite(specs, RunOptions(results_dir=tmp_path, timeout_s=hang_timeout_s, save_weights=False))
    nan = inline(small_spec(adapter="fault-nan", steps=6))
    assert no_workers_left(tmp_path)

    assert killed["error"] == "killed by signal SIGKILL without a result"
    # SIGKILL leaves the worker no moment to write: its trajectory died with it, so the run has none.
    assert killed["trajectory"]["losses"] == []
    assert hung["error"] == f"timed out after {hang_timeout_s} s"
    assert len(hung["trajectory"]["losses"]) == 2  # written by the worker on the timeout's SIGTERM
    assert nan["error"].startswith("non-finite loss") and "at step 2" in nan["error"]
    losses = nan["trajectory"]["losses"]  # the loop runs on; every loss from the poisoned step 2 is NaN
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses[:2]) and all(math.isnan(v) for v in losses[2:])
    for result, folder in ((killed, tmp_path), (hung, tmp_path), (nan, inline.results_dir)):
        assert_failed_run(read_result(folder / f"{result['spec_id']}.json"), folder, fault_store)


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
