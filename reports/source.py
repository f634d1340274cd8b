"""Read bakeoff runs back from MLflow: the report's only source of numbers.

A report is built from what the tracking store holds, never from result files on the side,
so its figures are the figures anyone sees in the MLflow UI.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.tracking import (
    INVOCATION_ARTIFACT,
    KIND_INVOCATION,
    KIND_RESULT,
    STEP_METRICS,
    TAG,
    client,
    experiment_name,
)


class SourceError(ValueError):
    """The selection names nothing in the store; the message is one line for the user."""


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which runs a report covers: a suite's or experiment's newest run per spec, or one invocation."""

    suite: str | None = None
    experiment: str | None = None
    run_id: str | None = None

    def describe(self) -> str:
        if self.run_id:
            return f"run {self.run_id}"
        if self.experiment:
            return f"experiment {self.experiment}"
        return f"suite {self.suite}"


@dataclass(kw_only=True)
class RunRecord:
    """One result run as MLflow holds it."""

    run_id: str
    experiment_id: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """metric key → [(step, value)] sorted by step, for the per-step metrics."""

    def tag(self, name: str, default: Any = None) -> Any:
        return self.tags.get(TAG + name, default)


def _record(mlflow_client, run, with_histories: bool) -> RunRecord:
    record = RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )
    if with_histories:
        for key in STEP_METRICS:
            if key in record.metrics:
                history = mlflow_client.get_metric_history(record.run_id, key)
                record.histories[key] = sorted((m.step, m.value) for m in history)
    return record


def _search(mlflow_client, experiment_id: str, kind: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG}kind` = '{kind}'", max_results=5000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _order(run) -> tuple[int, str]:
    return (run.info.start_time or 0, run.info.run_id)


def newest_per_spec(runs: list[Any]) -> list[Any]:
    """The newest run per spec id (a rerun of a spec supersedes the earlier result)."""
    chosen: dict[str, Any] = {}
    for run in runs:
        spec_id = run.data.tags.get(TAG + "spec_id")
        current = chosen.get(spec_id)
        if current is None or _order(run) > _order(current):
            chosen[spec_id] = run
    return list(chosen.values())


def load_runs(uri: str, selection: Selection, *, with_histories: bool = True) -> tuple[list[RunRecord], dict[str, Any]]:
    """The selected result runs and a description of where they came from (experiment, parent run)."""
    mlflow_client = client(uri)
    origin: dict[str, Any] = {"selection": selection.describe()}
    if selection.run_id:
        try:
            run = mlflow_client.get_run(selection.run_id)
        except Exception as error:
            raise SourceError(f"no run {selection.run_id} in {uri} ({type(error).__name__})") from None
        experiment = mlflow_client.get_experiment(run.info.experiment_id)
        origin.update(experiment=experiment.name, experiment_id=experiment.experiment_id)
        kind = run.data.tags.get(TAG + "kind")
        if kind == KIND_INVOCATION:
            origin.update(parent_run_id=run.info.run_id, suite=run.data.tags.get(TAG + "suite"))
            with tempfile.TemporaryDirectory(prefix="bakeoff-report-") as folder:
                path = mlflow_client.download_artifacts(run.info.run_id, INVOCATION_ARTIFACT, folder)
                invocation = json.loads(Path(path).read_text())
            run_ids = [invocation["runs"][s] for s in invocation["spec_ids"] if s in invocation["runs"]]
            runs = [mlflow_client.get_run(run_id) for run_id in run_ids]
        elif kind == KIND_RESULT:
            origin.update(suite=run.data.tags.get(TAG + "suite"))
            runs = [run]
        else:
            raise SourceError(f"run {selection.run_id} is not a bakeoff run (no {TAG}kind tag)")
    else:
        name = selection.experiment or experiment_name(selection.suite or "quick")
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise SourceError(f"no experiment {name!r} in {uri}; run `bakeoff bench` or `bakeoff ingest` first")
        origin.update(experiment=experiment.name, experiment_id=experiment.experiment_id)
        runs = newest_per_spec(_search(mlflow_client, experiment.experiment_id, KIND_RESULT))
        suites = sorted({r.data.tags.get(TAG + "suite", "") for r in runs})
        origin["suite"] = selection.suite or (suites[0] if len(suites) == 1 else None)
    if not runs:
        raise SourceError(f"{selection.describe()} holds no bakeoff result runs")
    return [_record(mlflow_client, run, with_histories) for run in runs], origin
