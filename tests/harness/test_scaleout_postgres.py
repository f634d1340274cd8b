"""Scale-out: two `bench --shard i/2` processes at once into one PostgreSQL-backed MLflow server.

The fixture starts a private PostgreSQL cluster from Debian's packages (``make test-deps`` installs
them): ``initdb`` into a temporary folder and ``pg_ctl start`` on a free port bound to 127.0.0.1, its
unix socket in that folder, run as the ``postgres`` user when the tests run as root. An ``mlflow
server`` (127.0.0.1, free port) uses it as its backend store. Both are stopped in the teardown,
whatever happened. Missing PostgreSQL binaries fail the test with the install command; they never
skip it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from harness import payload, store
from harness.cli import main
from tests.conftest import REPO_ROOT
from tests.harness.test_tracking import _free_port, running_mlflow_server

SUITE = "pgshard"
# Four specs: two seeds, two repeats. Shards split by spec id; with these ids shard 1 holds both
# repeat-0 runs and shard 2 both repeat-1 runs, so every parity pair (repeat 1 against its native
# reference, repeat 0) crosses the shards: each verdict can only come from the merged store.
SUITE_TOML = f"""name = "{SUITE}"
warmup = 1
repeats = 2
[[runs]]
task = "digits"
adapter = "native"
steps = 6
seed = [0, 1]
"""
INSTALL_HINT = "run `make test-deps` (installs Debian's postgresql) or `apt-get install postgresql`"


def postgres_bin() -> Path:
    """The folder holding initdb/pg_ctl/postgres: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    folders = [Path(found).resolve().parent] if found else []
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    folders += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for folder in folders:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    pytest.fail(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: {INSTALL_HINT}", pytrace=False)


def _as_server_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its commands as the `postgres` user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(f"running as root but there is no `postgres` user to run the server: {INSTALL_HINT}",
                    pytrace=False)
    return ["runuser", "-u", "postgres", "--"]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")


@contextlib.contextmanager
def private_postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1; yields (host, port, user, database). Stopped always."""
    try:
        import psycopg2
    except ImportError:
        pytest.fail("the PostgreSQL driver psycopg2 is missing: `make install` (dev extra: psycopg2-binary)",
                    pytrace=False)
    binaries, runner = postgres_bin(), _as_server_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="bakeoff-pg-"))
    data, log = base / "data", base / "server.log"
    if runner:
        record = pwd.getpwnam("postgres")
        os.chown(base, record.pw_uid, record.pw_gid)
    port = _free_port()
    started = False
    try:
        _run([*runner, str(binaries / "initdb"), "-D", str(data), "-U", "bakeoff", "-A", "trust", "-E", "UTF8",
              "--locale=C", "--no-sync"], "initdb")
        settings = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=50")
        started = True  # from here on, teardown stops it (pg_ctl stop on a server that never came up is harmless)
        _run([*runner, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", settings,
              "start"], "pg_ctl start")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="bakeoff", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield "127.0.0.1", port, "bakeoff", "mlflow"
    finally:
        if started:
            stop = subprocess.run([*runner, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                   "-t", "30", "stop"], capture_output=True, text=True, timeout=60)
            pid_file = data / "postmaster.pid"
            if stop.returncode != 0 and pid_file.exists():  # pg_ctl could not stop it: the postmaster by its PID
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().split()[0]), 9)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_mlflow(tmp_path_factory):
    """(tracking URI of an mlflow server over PostgreSQL, the PostgreSQL URI) for the module."""
    with private_postgres() as (host, port, user, database):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the driver installed is psycopg2.
        backend = f"postgresql+psycopg2://{user}@{host}:{port}/{database}"
        with running_mlflow_server(backend, tmp_path_factory.mktemp("pg-mlflow")) as uri:
            yield uri, backend


def _shard(suite: Path, index: int, results: Path, uri: str, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "harness", "bench", "--suite-file", str(suite), "--device", "cpu",
               "--shard", f"{index}/2", "--results-dir", str(results), "--tracking-uri", uri]
    env = {**os.environ, "BAKEOFF_REPORTS_OUT": str(out)}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


# Per-spec report columns fixed by what was computed, not by when or how fast: the spec, its
# status, the final weights and losses (CPU runs are deterministic) and the parity verdict.
CONTENT_COLUMNS = ("spec_id", "task", "adapter", "mode", "precision", "world_size", "seed", "repeat", "steps",
                   "status", "weights_digest", "final_loss", "eval_metric", "eval_loss", "parity", "parity_detail",
                   "parity_json", "error")


def _content(report) -> dict[str, dict]:
    rows = {row["spec_id"]: {k: row.get(k) for k in CONTENT_COLUMNS} for row in report.rows()}
    for record in report.records:
        rows[record.tag("spec_id")]["losses"] = record.histories.get("loss")
    return rows


def test_two_shards_into_a_postgres_backed_server_merge_into_the_unsharded_report(
    postgres_mlflow, tmp_path, monkeypatch
):
    """The merged report of two concurrent shards equals the report of the same suite run unsharded.

    "Equals" means every figure fixed by the computation: the same spec ids; per spec the status,
    weights digest, final and validation loss, the per-step loss history and the parity verdict
    (tag, text and structured form); and so the status and parity counts and the parity table
    (less MLflow run ids). Not compared: step times, throughput, wall and start-up times, run ids
    and start times — they differ between any two runs — and therefore not the report id, which
    is derived from all of the raw data. Each shard has its own results folder (two machines);
    the unsharded run trains the same specs in this process (same math, same digests) into the
    private SQLite store.
    """
    from harness import runner
    from harness.worker import run_inline
    from reports.build import build_report
    from reports.source import Selection

    uri, _ = postgres_mlflow
    suite = tmp_path / f"{SUITE}.toml"
    suite.write_text(SUITE_TOML)
    shards = [_shard(suite, i, tmp_path / f"shard{i}", uri, tmp_path / "out") for i in (1, 2)]
    try:
        # Meanwhile, the unsharded reference: workers in-process, logged into the private SQLite store.
        monkeypatch.setattr(runner, "run_spec",
                            lambda spec, options, *_: run_inline(spec, options.results_dir, warmup=1))
        monkeypatch.setenv("BAKEOFF_REPORTS_OUT", str(tmp_path / "out-unsharded"))
        sqlite_uri = os.environ["MLFLOW_TRACKING_URI"]
        assert main(["bench", "--suite-file", str(suite), "--device", "cpu", "--results-dir",
                     str(tmp_path / "unsharded"), "--tracking-uri", sqlite_uri]) == 0
        outputs = [shard.communicate(timeout=240)[0] for shard in shards]
    finally:
        for shard in shards:
            if shard.poll() is None:
                os.killpg(shard.pid, 9)
                shard.wait()
    for shard, output in zip(shards, outputs):
        assert shard.returncode == 0, output
        assert "mlflow: 2 runs logged" in output, output
        assert "Traceback" not in output

    # Disjoint shards that together are the suite.
    shard_ids = [{p.stem for p in (tmp_path / f"shard{i}").glob("*.json")} for i in (1, 2)]
    unsharded_ids = {p.stem for p in (tmp_path / "unsharded").glob("*.json")}
    assert len(unsharded_ids) == 4 and not shard_ids[0] & shard_ids[1] and shard_ids[0] | shard_ids[1] == unsharded_ids
    # The premise that makes this a test of cross-shard parity: each shard holds one repeat only,
    # so every repeat-1 run's native reference (repeat 0, same seed) is in the other shard.
    repeats = [{json.loads((tmp_path / f"shard{i}" / f"{n}.json").read_text())["spec"]["repeat"] for n in ids}
               for i, ids in zip((1, 2), shard_ids)]
    assert sorted(map(sorted, repeats)) == [[0], [1]], repeats

    # No duplicate MLflow runs: exactly one complete result run per spec id, none half-written.
    mlflow_client = store.client(uri)
    experiment = mlflow_client.get_experiment_by_name(store.experiment_name(SUITE))
    runs = store.search_kind(mlflow_client, experiment.experiment_id, payload.KIND_RESULT)
    assert Counter(run.data.tags["bakeoff.spec_id"] for run in runs) == dict.fromkeys(unsharded_ids, 1)
    assert store.search_kind(mlflow_client, experiment.experiment_id, payload.KIND_INCOMPLETE) == []
    assert len(store.search_kind(mlflow_client, experiment.experiment_id, payload.KIND_INVOCATION)) == 2

    merged = build_report(uri, Selection(suite=SUITE))
    unsharded = build_report(sqlite_uri, Selection(suite=SUITE))
    assert _content(merged) == _content(unsharded)
    verdicts = {row["spec_id"]: row["parity"] for row in merged.rows()}
    assert sorted(v for v in verdicts.values() if v) == ["bitwise", "bitwise"]  # both repeat-1 runs, across shards
    assert merged.frame["run_id"].nunique() == 4
    from reports import tables

    assert tables.status_counts(merged.frame) == tables.status_counts(unsharded.frame) == {"ok": 4}
    assert tables.parity_counts(merged.frame) == tables.parity_counts(unsharded.frame)

    def parity_rows(report):
        return sorted(tuple(sorted((k, v) for k, v in row.items() if k != "run_id")) for row in
                       report.tables["parity"].rows)

    assert parity_rows(merged) == parity_rows(unsharded)
