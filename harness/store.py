"""The MLflow tracking store: which one, whether it answers, and how runs are found in it.

Store: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else an explicit SQLite database at the
repository root with artifacts in a sibling folder. MLflow's own implicit default is never used:
with a ``./mlruns`` folder present it silently switches to the file store, which MLflow 3 refuses.

Only the orchestrator talks to a store (``harness.ingest`` writes, ``reports.source`` reads);
workers never import mlflow, so tracking costs nothing inside the timed loop.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness.environment import REPO_ROOT
from harness.payload import KIND_RESULT, TAG

DEFAULT_TRACKING_URI = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
ARTIFACTS_FOLDER = "mlartifacts"
EXPERIMENT_PREFIX = "bakeoff-"

# MLflow's batch limits (mlflow.utils.validation), restated so the module imports without mlflow.
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
SEARCH_PAGE = 5000


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or refused a write; the message is one line for the user."""


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the repository's SQLite database."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs`` or ``sqlite:///rel``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def store_kind(uri: str) -> str:
    """How a published file names a store: its kind, never its path or host (``SQLite``, ``MLflow server``)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "sqlite":
        return "MLflow SQLite store"
    if scheme in ("http", "https"):
        return "MLflow tracking server"
    if scheme.startswith(("postgresql", "mysql", "mssql")):
        return f"MLflow {scheme.split('+')[0]} store"
    return "MLflow store"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database; the server decides otherwise."""
    database = sqlite_path(uri)
    if database is None:
        return None
    return (database.resolve().parent / ARTIFACTS_FOLDER).as_uri()


def experiment_name(suite: str) -> str:
    return suite if suite.startswith(EXPERIMENT_PREFIX) else EXPERIMENT_PREFIX + suite


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError unless the store answers; called before anything is trained."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
                if response.status != 200:
                    raise TrackingError(f"tracking server {uri} answered /health with HTTP {response.status}")
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise TrackingError(f"tracking server {uri} is unreachable ({reason})") from None
        return
    database = sqlite_path(uri)
    if database is not None:
        folder = database.resolve().parent
        if not folder.is_dir():
            raise TrackingError(f"tracking store {uri}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking store {uri}: folder {folder} is not writable")
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as error:
        problem = f"{type(error).__name__}: {first_line(error)}"
        raise TrackingError(f"tracking store {uri} is unusable ({problem})") from None


def client(uri: str):
    # bakeoff prints its own progress; MLflow's artifact progress bars and its "View run at" lines
    # (one extra get_run request per finished run on a server) would interleave with it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(mlflow_client, name: str, uri: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_root(uri)
    try:
        return mlflow_client.create_experiment(
            name, artifact_location=f"{location}/{name}" if location else None,
            tags={"bakeoff.suite": name},
        )
    except Exception:  # another process created it first
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


VIEW_KEY = "bakeoff"
"""The saved view bakeoff writes on every experiment (``mlflow.sharedViewState.<key>``)."""
VIEW_COLUMNS = (
    "tags.`bakeoff.adapter`", "tags.`bakeoff.mode`", "tags.`bakeoff.precision`", "tags.`bakeoff.parity`",
    "metrics.`median_step_us`", "tags.`bakeoff.task`", "tags.`bakeoff.world_size`", "tags.`bakeoff.status`",
    "metrics.`library_startup_s`", "metrics.`final_loss`",
)
"""Most telling first: what ran, its verdict and its step time fit on a 1400-pixel screen."""


def view_state() -> dict[str, Any]:
    """The runs table a reader needs: only result runs as a flat list (no invocation rows to expand), the
    columns that say what each run is and what it measured, and run names wide enough to read."""
    return {
        "searchFilter": f"tags.`{TAG}kind` = '{KIND_RESULT}'",
        # Sorted by a metric, not by date: by date the UI nests child runs under their (hidden) parent.
        "orderByKey": "metrics.`median_step_us`",
        "orderByAsc": True,
        "selectedColumns": list(VIEW_COLUMNS),
        "columnOrder": ["attributes.`Run Name`", *VIEW_COLUMNS],
        "columnWidths": {"attributes.`Run Name`": 270, **{column: 104 for column in VIEW_COLUMNS}},
    }


def set_view(mlflow_client, experiment_id: str, now_ms: int) -> None:
    """Write bakeoff's saved view onto the experiment (MLflow 3 reads shared views from experiment tags)."""
    experiment = mlflow_client.get_experiment(experiment_id)
    key = f"mlflow.sharedViewState.{VIEW_KEY}"
    state = json.dumps(view_state(), sort_keys=True)
    existing = experiment.tags.get(key)
    if existing:
        try:
            if json.loads(existing).get("state") == state:
                return
        except ValueError:
            pass
    envelope = {"name": "bakeoff: what each run is and measured", "createdAt": now_ms, "updatedAt": now_ms,
                "state": state}
    mlflow_client.set_experiment_tag(experiment_id, key, json.dumps(envelope))


def view_url(base: str, experiment_id: str) -> str:
    """The experiment's run table in the model-training view, with bakeoff's columns."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def search_kind(mlflow_client, experiment_id: str, kind: str) -> list[Any]:
    """Every active run of the experiment tagged ``bakeoff.kind = kind``."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG}kind` = '{kind}'", max_results=SEARCH_PAGE, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def run_key(run) -> tuple[str | None, str | None]:
    """(spec id, result digest): a run's identity as a logged result."""
    tags = run.data.tags
    return tags.get(TAG + "spec_id"), tags.get(TAG + "result_digest")


def existing_results(mlflow_client, experiment_id: str) -> dict[tuple[str, str], Any]:
    """(spec_id, result_digest) → run for every completely logged bakeoff result run in the experiment."""
    return {run_key(run): run for run in search_kind(mlflow_client, experiment_id, KIND_RESULT)}


def newest_per_spec(runs: Iterable[Any]) -> list[Any]:
    """The newest run per spec id (a rerun of a spec supersedes the earlier result)."""
    chosen: dict[str, Any] = {}
    for run in runs:
        spec_id = run.data.tags.get(TAG + "spec_id")
        current = chosen.get(spec_id)
        if current is None or _started(run) > _started(current):
            chosen[spec_id] = run
    return list(chosen.values())


def _started(run) -> tuple[int, str]:
    return (run.info.start_time or 0, run.info.run_id)
