"""The tracking store dying: results stay on disk, `ingest` completes the store, nothing twice.

Two ways: a real ``mlflow server`` stopped while `bench` is running its suite, and a store that
fails at every possible write of a logging pass (in-process fault injection), so some runs are
logged, one is half-written and the rest are not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace

import pytest

from harness import ingest, payload, store
from harness.cli import main
from harness.result import base_result, read_result, result_path, write_result
from harness.spec import Spec
from tests.conftest import REPO_ROOT
from tests.harness.test_tracking import running_mlflow_server

SUITE_TOML = """name = "outage"
warmup = 1
[[runs]]
task = "digits"
adapter = "native"
steps = 4
seed = [0, 1, 2]
"""


def _result_runs(uri: str, experiment: str) -> list:
    mlflow_client = store.client(uri)
    found = mlflow_client.get_experiment_by_name(store.experiment_name(experiment))
    return store.search_kind(mlflow_client, found.experiment_id, payload.KIND_RESULT) if found else []


def test_server_stopped_mid_suite_keeps_every_result_for_one_ingest(tmp_path, capsys):
    backend = f"sqlite:///{tmp_path / 'server' / 'db.sqlite'}"
    suite, results = tmp_path / "outage.toml", tmp_path / "results"
    suite.write_text(SUITE_TOML)
    # Fail fast once the server is gone instead of MLflow's minutes of retries (the default for blips).
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    with ExitStack() as server:
        uri = server.enter_context(running_mlflow_server(backend, tmp_path / "server"))
        bench = subprocess.Popen(
            [sys.executable, "-m", "harness", "bench", "--suite-file", str(suite), "--device", "cpu",
             "--results-dir", str(results), "--tracking-uri", uri],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 120
        while not list(results.glob("*.json")) and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.2)
        assert list(results.glob("*.json")), "no spec finished within 120 s"
        assert bench.poll() is None, "the suite ended before the server could be stopped mid-suite"
    # The server is stopped (by its process group) while the suite is still running.
    out, err = bench.communicate(timeout=240)
    assert bench.returncode == 1, out + err  # `bakeoff bench --help`: 1 = the store failed after the suite ran
    assert "Traceback" not in out + err
    complaints = [line for line in err.splitlines() if line.startswith("bakeoff:")]
    assert len(complaints) == 1, err
    assert complaints[0].startswith("bakeoff: error: ") and f"`bakeoff ingest {results}`" in complaints[0]
    assert "suite outage: 3 ok" in out  # the suite went on after the store died
    files = sorted(results.glob("*.json"))
    assert len(files) == 3 and all(read_result(path)["status"] == "ok" for path in files)

    with running_mlflow_server(backend, tmp_path / "server") as uri:  # the same store, back up
        assert main(["ingest", str(results), "--suite", "outage", "--tracking-uri", uri]) == 0
        assert " 3 new runs" in capsys.readouterr().out
        assert main(["ingest", str(results), "--suite", "outage", "--tracking-uri", uri]) == 0
        assert " 0 new runs" in capsys.readouterr().out
        runs = _result_runs(uri, "outage")
        assert Counter(run.data.tags["bakeoff.spec_id"] for run in runs) == {path.stem: 1 for path in files}


# --------------------------------------------------------------------------- dying part-way


WRITES = ("create_run", "log_batch", "log_inputs", "log_artifacts", "set_terminated", "set_tag", "delete_run")


class DyingStore:
    """Counts the client's writes; with ``die_at`` set, that write and every later call fail like a dead server."""

    def __init__(self, monkeypatch, die_at: int | None = None) -> None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self.calls, self.die_at, self.dead = 0, die_at, False

        def wrap(name, real):
            def method(client, *args, **kwargs):
                if name in WRITES:
                    self.calls += 1
                    if self.die_at is not None and self.calls >= self.die_at:
                        self.dead = True
                if self.dead:
                    raise MlflowException("API request failed: Connection refused (injected)")
                return real(client, *args, **kwargs)

            return method

        for name in (*WRITES, "search_runs", "get_experiment_by_name", "download_artifacts"):
            monkeypatch.setattr(MlflowClient, name, wrap(name, getattr(MlflowClient, name)))


@pytest.fixture(scope="module")
def outage_results(tmp_path_factory):
    """Four results with every status: two native runs (the second a repeat: a parity verdict), failed, unsupported."""
    from harness.worker import run_inline

    folder = tmp_path_factory.mktemp("outage-results")
    spec = Spec(task="digits", adapter="native", steps=3, batch_size=32, lr=0.05, device="cpu")
    results = [run_inline(spec, folder, warmup=1), run_inline(replace(spec, repeat=1), folder, warmup=1)]
    failed = base_result(replace(spec, seed=7), status="failed", error="worker exited with code 1 without a result")
    unsupported = base_result(replace(spec, adapter="keras"), status="unsupported", error="not trained here")
    for result in (failed, unsupported):
        write_result(result_path(folder, Spec.from_dict(result["spec"])), result)
    return folder, [read_result(result_path(folder, Spec.from_dict(r["spec"]))) for r in [*results, failed,
                                                                                          unsupported]]


def test_store_dying_at_any_write_is_completed_by_ingest_without_duplicates(outage_results, monkeypatch, tmp_path):
    folder, results = outage_results
    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's private SQLite store (tests/conftest.py)
    with monkeypatch.context() as patch:
        counter = DyingStore(patch)
        ingest.log_results(results, results_dir=folder, suite="clean", uri=uri, command="bench")
        writes = counter.calls
    assert writes >= 4 * 5  # per run: create, log_batch, log_inputs/artifacts, terminate, final tag
    partial_seen = set()
    for die_at in range(1, writes + 1):
        name = f"cut-{die_at}"
        with monkeypatch.context() as patch:
            DyingStore(patch, die_at=die_at)
            with pytest.raises(store.TrackingError, match="injected"):
                ingest.log_results(results, results_dir=folder, suite=name, uri=uri, command="bench")
        already = len(_result_runs(uri, name))
        partial_seen.add(already)
        again = ingest.log_results(results, results_dir=folder, suite=name, uri=uri, command="ingest")
        assert len(again.logged) + len(again.existing) == len(results)
        assert len(again.logged) == len(results) - already
        runs = _result_runs(uri, name)
        assert Counter(run.data.tags["bakeoff.spec_id"] for run in runs) == {r["spec_id"]: 1 for r in results}, die_at
        mlflow_client = store.client(uri)
        experiment_id = runs[0].info.experiment_id
        assert store.search_kind(mlflow_client, experiment_id, payload.KIND_INCOMPLETE) == [], die_at
        # Not even an anonymous run: one cut right after create_run once left a run with no tags at all.
        every_run = mlflow_client.search_runs([experiment_id])
        kinds = Counter(run.data.tags.get("bakeoff.kind") for run in every_run)
        assert set(kinds) <= {payload.KIND_RESULT, payload.KIND_INVOCATION}, (die_at, kinds)
        by_spec = {run.data.tags["bakeoff.spec_id"]: run for run in runs}
        for result in results:  # every run complete: status, artifacts, the whole trajectory
            run = by_spec[result["spec_id"]]
            assert run.info.status == payload.RUN_STATUS[result["status"]], die_at
            assert {a.path for a in mlflow_client.list_artifacts(run.info.run_id)} == {
                "result.json", "env.json", "trajectory.csv"}, die_at
            losses = mlflow_client.get_metric_history(run.info.run_id, "loss")
            assert sorted((m.step, m.value) for m in losses) == list(enumerate(result["trajectory"]["losses"]))
        repeat = by_spec[results[1]["spec_id"]]
        assert repeat.data.tags["bakeoff.parity"] == "bitwise", die_at
        final = ingest.log_results(results, results_dir=folder, suite=name, uri=uri, command="ingest")
        assert final.logged == {} and final.parent_run_id is None and final.parity_updated == 0
        assert len(_result_runs(uri, name)) == len(results)
    print(f"store killed at each of {writes} writes; result runs already logged when it died: {sorted(partial_seen)}")
    # The cuts covered a store dying with none, some and all of the runs logged.
    assert {0, len(results)} <= partial_seen and partial_seen & set(range(1, len(results)))


def test_log_inputs_retries_a_lost_race_on_the_dataset_table_and_nothing_else():
    """Two shards inserting one dataset at once: the loser's unique-key violation is retried, other errors are not."""
    from mlflow.exceptions import MlflowException

    class Store:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    race = MlflowException('(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "x"')
    store = Store([race])
    ingest.log_inputs(store, "run", [])
    assert store.calls == 2
    store = Store([MlflowException("Connection refused")])
    with pytest.raises(MlflowException, match="Connection refused"):
        ingest.log_inputs(store, "run", [])
    assert store.calls == 1
    store = Store([race, race, race])
    with pytest.raises(MlflowException, match="UniqueViolation"):
        ingest.log_inputs(store, "run", [])
    assert store.calls == 3
