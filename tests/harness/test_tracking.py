"""MLflow tracking: layout, read-back through MlflowClient, idempotent ingest, store faults, secrets.

Runs against the SQLite store and against a real ``mlflow server`` started here on 127.0.0.1 (free
port, one worker) and stopped by its own process id. The results are a cut-down quick suite: the
single-process native cells trained in-process (few steps), a native repeat (parity: bitwise), the
DDP cell as a failed result and every other adapter as unsupported, so every status is covered.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from harness import ingest, payload
from harness import store as mlstore
from harness.cli import main
from harness.result import Result, base_result, read_result, result_path, validate_result, write_result
from harness.spec import Spec
from harness.suites import get_suite

STEPS = 3
WARMUP = 1
SECRET = "bakeoff-PLANTED-aws-secret-7f3a9c"
INLINE_TASKS = {("digits", "fp32"), ("digits", "bf16-mixed"), ("tabular", "fp32")}
RESULT_ARTIFACTS = {"result.json", "env.json", "trajectory.csv"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_suite_results(folder: Path) -> list[dict]:
    """A cut-down quick suite with every status: ok (inline), failed (DDP cell), unsupported (libraries)."""
    from harness.worker import run_inline

    results = []
    specs = [replace(spec, steps=STEPS) for spec in get_suite("quick", "cpu").specs if not spec.options]
    specs.append(replace(specs[0], repeat=1))  # native digits fp32 again: must be bitwise equal to the first
    for spec in specs:
        if spec.adapter != "native":
            result = base_result(spec, status="unsupported", error=f"{spec.adapter} is not trained in this test")
            write_result(result_path(folder, spec), result)
        elif spec.world_size > 1:
            # A library that echoes a credential into its error output must not leak it anywhere.
            result = base_result(spec, status="failed", error=f"worker exited with code 1 (token {SECRET})")
            result["output_tail"] = f"Traceback ... AWS_SECRET_ACCESS_KEY={SECRET}\n"
            result["summary"]["wall_s"] = 1.5
            write_result(result_path(folder, spec), result)
        elif (spec.task, spec.precision) in INLINE_TASKS:
            result = run_inline(spec, folder, warmup=WARMUP)
        else:
            continue
        validate_result(result)
        results.append(read_result(result_path(folder, spec)))
    return results


@pytest.fixture(scope="module")
def planted_secret():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        yield SECRET


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory, planted_secret):
    folder = tmp_path_factory.mktemp("results")
    return folder, build_suite_results(folder)


@contextlib.contextmanager
def running_mlflow_server(backend_uri: str, root: Path, port: int | None = None):
    """``mlflow server`` on 127.0.0.1 (a free port unless given) over ``backend_uri``; yields its URI.

    One worker and no GenAI job runner (it would start seven more processes on a two-core machine).
    Stopped by its own process group (its id is the server's PID: uvicorn's worker goes too), always.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", backend_uri,
        "--default-artifact-root", str(root / "artifacts"),
    ]
    log_path = root / f"server-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed after the server stops
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_process_group(process)
        log.close()


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's own group, SIGKILL to whatever ignored it; reaped either way."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server on a free local port over a SQLite store."""
    root = tmp_path_factory.mktemp("server")
    with running_mlflow_server(f"sqlite:///{root / 'db.sqlite'}", root) as uri:
        yield uri


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating its schema costs seconds); tests use their own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'mlflow.db'}"


_logged: dict[str, tuple[str, ingest.LogReport]] = {}


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path_factory, suite_results):
    """(uri, what logging the suite results reported), logged once per store kind."""
    if request.param not in _logged:
        uri = request.getfixturevalue("sqlite_uri" if request.param == "sqlite" else "mlflow_server")
        mlstore.check_store(uri)
        folder, results = suite_results
        report = ingest.log_results(results, results_dir=folder, suite="quick", uri=uri, command="bench")
        _logged[request.param] = (uri, report)
    return _logged[request.param]


def _all_result_runs(uri: str, experiment_id: str):
    return mlstore.client(uri).search_runs([experiment_id], filter_string="tags.`bakeoff.kind` = 'result'")


# --------------------------------------------------------------------------- store selection


def test_default_store_is_an_explicit_sqlite_uri_at_the_repository_root(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = Path(ingest.__file__).resolve().parents[1]
    assert mlstore.resolve_tracking_uri() == f"sqlite:///{root / 'mlflow.db'}"
    assert mlstore.artifact_root(mlstore.resolve_tracking_uri()) == (root / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlstore.resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert mlstore.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert mlstore.artifact_root("http://127.0.0.1:5000") is None  # the server decides


def test_sqlite_store_never_creates_mlruns_in_the_working_directory(tmp_path, monkeypatch, suite_results, sqlite_uri):
    monkeypatch.chdir(tmp_path)
    folder, results = suite_results
    ingest.log_results(results[:1], results_dir=folder, suite="cwd", uri=sqlite_uri, command="bench")
    assert not (tmp_path / "mlruns").exists()
    beside_database = mlstore.sqlite_path(sqlite_uri).parent / "mlartifacts" / "bakeoff-cwd"
    assert any(beside_database.rglob("result.json"))


# --------------------------------------------------------------------------- read-back


def test_suite_runs_read_back_with_params_metrics_tags_and_artifacts(store, suite_results):
    uri, report = store
    folder, results = suite_results
    client = mlstore.client(uri)
    assert set(report.logged) == {r["spec_id"] for r in results}
    statuses = {r["status"] for r in results}
    assert statuses == {"ok", "failed", "unsupported"}
    for result in results:
        run = client.get_run(report.logged[result["spec_id"]])
        tags, spec = run.data.tags, result["spec"]
        assert tags["mlflow.parentRunId"] == report.parent_run_id
        assert run.data.params == payload.params_of(spec)
        assert tags["bakeoff.spec_id"] == result["spec_id"]
        assert tags["bakeoff.status"] == result["status"]
        for name in ("task", "adapter", "mode", "precision"):
            assert tags[f"bakeoff.{name}"] == spec[name]
        assert tags["bakeoff.world_size"] == str(spec["world_size"])
        assert {f.path for f in client.list_artifacts(run.info.run_id)} == RESULT_ARTIFACTS
        if result["status"] == "failed":
            assert run.info.status == "FAILED"
            assert tags["bakeoff.error"].startswith("worker exited with code 1")
            continue
        assert run.info.status == "FINISHED"
        if result["status"] == "unsupported":
            assert tags["bakeoff.error"] == result["error"]
            continue
        environment = result["environment"]
        assert tags["bakeoff.git_sha"] == str(environment["git_sha"])
        assert tags["bakeoff.git_dirty"] == json.dumps(environment["git_dirty"])
        assert tags["bakeoff.torch"] == environment["torch"]
        assert tags["bakeoff.device_name"] == environment["device_name"]
        assert tags["bakeoff.library"] == "torch"
        assert tags["bakeoff.style"] == "native"
        assert tags["bakeoff.weights_digest"] == result["weights_digest"]
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in sorted(losses, key=lambda m: m.step)] == list(
            enumerate(result["trajectory"]["losses"])
        )
        step_times = sorted(client.get_metric_history(run.info.run_id, "step_time_us"), key=lambda m: m.step)
        assert [m.value for m in step_times] == payload.step_times_us(result["trajectory"]["step_end_ns"])
        summary = result["summary"]
        for key in ("median_step_us", "throughput_samples_per_s", "peak_memory_bytes", "final_loss", "eval_metric",
                    "wall_s"):
            assert run.data.metrics[key] == pytest.approx(summary[key], rel=0, abs=0)
        (dataset_input,) = run.inputs.dataset_inputs
        assert dataset_input.dataset.digest == result["task"]["data_digest"][:36]
        assert json.loads(dataset_input.dataset.profile)["data_digest_sha256"] == result["task"]["data_digest"]
        trajectory = client.download_artifacts(run.info.run_id, "trajectory.csv", str(folder / "dl" / run.info.run_id))
        rows = list(csv.DictReader(io.StringIO(Path(trajectory).read_text())))
        assert [float(r["loss"]) for r in rows] == result["trajectory"]["losses"]


def test_parity_verdicts_are_tags(store, suite_results):
    uri, report = store
    _, results = suite_results
    client = mlstore.client(uri)
    by_label = {Spec.from_dict(r["spec"]).label: r for r in results}
    repeat = by_label["digits native aligned fp32 s0 r1"]
    first = by_label["digits native aligned fp32 s0"]
    assert repeat["weights_digest"] == first["weights_digest"]  # deterministic CPU run, same process
    tags = client.get_run(report.logged[repeat["spec_id"]]).data.tags
    assert tags["bakeoff.parity"] == "bitwise"
    assert "bakeoff.parity" not in client.get_run(report.logged[first["spec_id"]]).data.tags  # the reference
    # The quick suite's DDP cell has the single-process global batch, so it is compared with the
    # single-process native run; this fixture's DDP result is a failure, so it is not comparable.
    ddp = by_label["digits native aligned fp32 ws2 s0"]
    ddp_tags = client.get_run(report.logged[ddp["spec_id"]]).data.tags
    assert ddp["status"] == "failed"
    assert ddp_tags["bakeoff.parity_detail"].startswith("not-comparable: candidate run failed")
    lightning = by_label["digits lightning aligned fp32 s0"]
    lightning_tags = client.get_run(report.logged[lightning["spec_id"]]).data.tags
    assert lightning_tags["bakeoff.parity"] == "not-comparable"
    assert lightning_tags["bakeoff.parity_detail"].startswith("not-comparable: candidate run unsupported")
    parent = client.get_run(report.parent_run_id)
    assert parent.data.tags["bakeoff.kind"] == "invocation"
    assert parent.data.metrics["runs_ok"] == sum(r["status"] == "ok" for r in results)


def test_ingest_twice_creates_no_duplicates(store, suite_results):
    uri, report = store
    folder, results = suite_results
    before = len(_all_result_runs(uri, report.experiment_id))
    again = ingest.log_results(results, results_dir=folder, suite="quick", uri=uri, command="ingest")
    assert again.logged == {} and again.parent_run_id is None
    assert again.existing == report.logged
    assert len(_all_result_runs(uri, report.experiment_id)) == before == len(results)


def test_two_processes_logging_one_folder_at_once_log_each_result_once(suite_results, tmp_path):
    """Two `bakeoff ingest` processes started together on one folder and one store: one run per result.

    Without the folder's logging lock both found every result missing and both logged it."""
    folder, results = suite_results
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "harness.cli", "ingest", str(folder), "--suite", "quick", "--tracking-uri", uri]
    environ = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    mlstore.check_store(uri)  # create the schema first: two processes migrating one SQLite file is its own race
    processes = [subprocess.Popen(command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    experiment_id = mlstore.client(uri).get_experiment_by_name(mlstore.experiment_name("quick")).experiment_id
    runs = _all_result_runs(uri, experiment_id)
    assert sorted(r.data.tags[payload.TAG + "spec_id"] for r in runs) == sorted(r["spec_id"] for r in results)
    assert sum(f"{len(results)} new runs" in out for out in outputs) == 1, outputs
    assert sum(bool(re.search(r"\b0 new runs", out)) for out in outputs) == 1, outputs


def test_a_folder_that_cannot_hold_the_lock_is_still_ingested(suite_results, tmp_path, monkeypatch):
    """Ingesting someone else's (read-only) results: the logging lock moves to /tmp, keyed by the folder."""
    import builtins
    import hashlib
    import tempfile

    folder, results = suite_results
    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith(".tracking.lock") and Path(path).parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(ingest, "open", refusing_open, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = ingest.log_results(results, results_dir=folder, suite="quick", uri=uri, command="ingest")
    assert len(logged.logged) == len(results)
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    assert (Path(tempfile.gettempdir()) / f"bakeoff-tracking-{key}.lock").exists()


def test_report_from_the_store_holds_the_figures_mlflow_holds(store, suite_results, tmp_path):
    from reports.build import build_report, write_report
    from reports.render import fmt
    from reports.source import Selection

    uri, report = store
    built = build_report(uri, Selection(run_id=report.parent_run_id))
    folder = write_report(built, tmp_path)
    markdown = (folder / "report.md").read_text()
    rows = {row["spec_id"]: row for row in csv.DictReader(io.StringIO((folder / "results.csv").read_text()))}
    client = mlstore.client(uri)
    assert set(rows) == set(report.logged)
    for spec_id, run_id in report.logged.items():
        metrics = client.get_run(run_id).data.metrics
        for key in ("median_step_us", "throughput_samples_per_s", "peak_memory_bytes", "final_loss", "eval_metric"):
            if key in metrics:
                assert float(rows[spec_id][key]) == metrics[key]
        if "median_step_us" in metrics:
            assert fmt(metrics["median_step_us"]) in markdown


# --------------------------------------------------------------------------- cost of logging


def test_per_step_metrics_go_in_with_log_batch_within_mlflow_limits(suite_results, monkeypatch, sqlite_uri):
    from mlflow import MlflowClient

    _, results = suite_results
    result = json.loads(json.dumps(next(r for r in results if r["status"] == "ok")))
    steps = 2500
    result["trajectory"] = {"losses": [1.0 / (i + 1) for i in range(steps)],
                            "step_end_ns": [(i + 1) * 1000 for i in range(steps)]}
    calls: list[tuple[str, int]] = []
    real_batch = MlflowClient.log_batch

    def spy_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(("log_batch", len(metrics)))
        assert len(metrics) + len(params) + len(tags) <= 1000 and len(params) <= 100 and len(tags) <= 100
        return real_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", spy_batch)
    monkeypatch.setattr(MlflowClient, "log_metric", lambda *a, **k: calls.append(("log_metric", 1)))
    uri = sqlite_uri
    client = mlstore.client(uri)
    experiment = mlstore.get_or_create_experiment(client, "bakeoff-batch", uri)
    started = time.perf_counter()
    run_id = ingest.log_result(client, experiment, result, suite="batch")
    seconds = time.perf_counter() - started
    print(f"logging one run with {2 * steps} metric points to SQLite took {seconds:.2f} s")
    assert ("log_metric", 1) not in calls
    points = 2 * steps + len(payload.summary_metrics(Result.from_dict(result)))
    assert sum(n for _, n in calls) == points
    assert len(calls) <= 1 + -(-points // 1000)  # 5000+ points: 6 calls at most, not one per point
    assert len(client.get_metric_history(run_id, "loss")) == steps


def test_long_values_are_clipped_to_mlflow_limits(sqlite_uri):
    spec = Spec(task="scaling", adapter="native", batch_size=4, steps=1, lr=0.1, options={"note": "x" * 7000})
    result = base_result(spec, status="unsupported", error="y" * 9000)
    params = payload.params_of(result["spec"])
    assert len(params["options.note"]) == 7002  # JSON-quoted; clipped when logged
    uri = sqlite_uri
    client = mlstore.client(uri)
    run_id = ingest.log_result(client, mlstore.get_or_create_experiment(client, "bakeoff-clip", uri), result,
                                 suite="clip")
    run = client.get_run(run_id)
    assert len(run.data.params["options.note"]) <= payload.MAX_PARAM_VALUE
    assert len(run.data.tags["bakeoff.error"]) <= payload.MAX_TAG_VALUE
    assert run.data.tags["bakeoff.error"].endswith("[truncated]")


# --------------------------------------------------------------------------- faults


def _tiny_suite(tmp_path, monkeypatch, name: str) -> list[str]:
    """`bench` arguments for a one-spec suite whose worker runs in-process (no 5 s interpreter start)."""
    from harness import runner
    from harness.worker import run_inline

    monkeypatch.setattr(runner, "run_spec", lambda spec, options, *_: run_inline(spec, options.results_dir, warmup=1))
    suite = tmp_path / "tiny.toml"
    suite.write_text(f'name = "{name}"\nwarmup = 1\n[[runs]]\ntask = "digits"\nadapter = "native"\nsteps = 3\n')
    return ["bench", "--suite-file", str(suite), "--device", "cpu", "--results-dir", str(tmp_path / "results")]


def test_unreachable_store_is_reported_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("harness.runner.run_spec", lambda *a, **k: pytest.fail("trained despite a dead store"))
    results = tmp_path / "results"
    for uri in (f"http://127.0.0.1:{_free_port()}", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"):
        code = main(["bench", "--suite", "smoke", "--results-dir", str(results), "--tracking-uri", uri])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("bakeoff: error: tracking") and "nothing was run" in err
        assert len(err.strip().splitlines()) == 1
        assert not results.exists()


def test_store_failure_after_training_keeps_results_for_a_later_ingest(tmp_path, capsys, monkeypatch, sqlite_uri):
    from mlflow.exceptions import MlflowException

    bench = _tiny_suite(tmp_path, monkeypatch, "fault")
    uri = sqlite_uri
    results = tmp_path / "results"

    def broken(*args, **kwargs):
        raise MlflowException("database is locked")

    monkeypatch.setattr(ingest, "write_payload", broken)
    code = main([*bench, "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 1
    assert "database is locked" in err and f"bakeoff ingest {results}" in err
    (path,) = results.glob("*.json")
    assert read_result(path)["status"] == "ok"
    monkeypatch.undo()
    assert main(["ingest", str(results), "--suite", "fault", "--tracking-uri", uri]) == 0
    assert "1 new runs" in capsys.readouterr().out
    assert main(["ingest", str(results), "--suite", "fault", "--tracking-uri", uri]) == 0
    assert "0 new runs" in capsys.readouterr().out


def test_bench_logs_to_mlflow_and_ends_with_a_report(tmp_path, capsys, monkeypatch, sqlite_uri):
    bench = _tiny_suite(tmp_path, monkeypatch, "tiny")
    monkeypatch.setenv("BAKEOFF_REPORTS_OUT", str(tmp_path / "out"))
    uri = sqlite_uri
    code = main([*bench, "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert code == 0
    assert "mlflow: 1 runs logged" in out
    html = next(line for line in out.splitlines() if line.startswith("report ")).rsplit(" ", 1)[1]
    assert Path(html).is_file() and Path(html).parent.parent == tmp_path / "out"


# --------------------------------------------------------------------------- secrets


def test_planted_secret_reaches_no_param_tag_artifact_or_report(store, suite_results, planted_secret, tmp_path):
    from reports.build import build_report, write_report
    from reports.source import Selection

    uri, report = store
    client = mlstore.client(uri)
    texts = []
    for run_id in [*report.logged.values(), report.parent_run_id]:
        run = client.get_run(run_id)
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
        target = tmp_path / run_id
        local = client.download_artifacts(run_id, "", str(target))
        texts += [p.read_text() for p in Path(local).rglob("*") if p.is_file()]
    folder = write_report(build_report(uri, Selection(run_id=report.parent_run_id)), tmp_path / "reports")
    texts += [p.read_text(errors="replace") for p in folder.iterdir() if p.suffix in (".md", ".html", ".csv", ".json")]
    assert texts
    assert all(planted_secret not in text for text in texts)
    assert all("AWS_SECRET_ACCESS_KEY=" + planted_secret not in text for text in texts)
    assert any(payload.REDACTED in text for text in texts)  # the failed run's error was scrubbed, not dropped


# --------------------------------------------------------------------------- what a user is told


def test_partial_ingest_exits_1_with_a_summary_unless_partial_is_accepted(suite_results, tmp_path, capsys,
                                                                        sqlite_uri):
    import shutil

    source, results = suite_results
    folder = tmp_path / "partial"
    folder.mkdir()
    for path in source.glob("*.json"):
        shutil.copy(path, folder / path.name)
    first = sorted(folder.glob("*.json"))[0]
    (folder / "truncated.json").write_text(first.read_text()[:200])
    mismatched = json.loads(first.read_text())
    mismatched["spec_id"] = "0123456789abcdef"
    (folder / "mismatched.json").write_text(json.dumps(mismatched))
    uri = sqlite_uri
    assert main(["ingest", str(folder), "--suite", "partial", "--tracking-uri", uri]) == 1
    err = capsys.readouterr().err
    assert "skipping" in err and "truncated.json" in err and "mismatched.json" in err
    assert f"2 of {len(results) + 2} files in {folder} were skipped" in err and "--allow-partial" in err
    assert main(["ingest", str(folder), "--suite", "partial", "--tracking-uri", uri, "--allow-partial"]) == 0
    assert main(["ingest", str(first), "--suite", "partial", "--tracking-uri", uri]) == 2
    assert "is a file; ingest takes a folder" in capsys.readouterr().err


def test_a_bench_rerun_that_logs_nothing_adds_no_run_and_its_report_cites_the_logged_runs(
    tmp_path, capsys, monkeypatch, sqlite_uri
):
    bench = _tiny_suite(tmp_path, monkeypatch, "rerun")
    monkeypatch.setenv("BAKEOFF_REPORTS_OUT", str(tmp_path / "out"))
    uri = sqlite_uri
    assert main([*bench, "--tracking-uri", uri]) == 0
    capsys.readouterr()
    assert main([*bench, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "mlflow: 0 runs logged, 1 already there" in out and "nothing new, no parent run" in out
    client = mlstore.client(uri)
    experiment = client.get_experiment_by_name(mlstore.experiment_name("rerun")).experiment_id
    assert len(mlstore.search_kind(client, experiment, payload.KIND_INVOCATION)) == 1
    (result_run,) = mlstore.search_kind(client, experiment, payload.KIND_RESULT)
    html = next(line for line in out.splitlines() if line.startswith("report ")).rsplit(" ", 1)[1]
    raw = json.loads((Path(html).parent / "raw.json").read_text())
    assert [run["run_id"] for run in raw["runs"]] == [result_run.info.run_id]
    assert "parent_run_id" not in raw["origin"]
