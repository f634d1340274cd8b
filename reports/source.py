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

from harness import parity
from harness.ingest import COST_ARTIFACT, INVOCATION_ARTIFACT
from harness.payload import KIND_COST, KIND_INVOCATION, KIND_RESULT, STEP_METRICS, TAG, Payload, payload_of
from harness.result import Result
from harness.store import client, experiment_name, newest_per_spec, search_kind


class SourceError(ValueError):
    """The selection names nothing in the store; the message is one line for the user."""


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which runs a report covers: a suite's or experiment's newest run per spec, or one invocation."""

    suite: str | None = None
    experiment: str | None = None
    run_id: str | None = None
    run_ids: tuple[str, ...] = ()
    """Exactly these result runs of the suite's experiment (what one ``bench`` invocation covers)."""

    def describe(self) -> str:
        if self.run_id:
            return f"run {self.run_id}"
        if self.run_ids:
            return f"{len(self.run_ids)} runs of suite {self.suite}"
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
    environment: dict[str, Any] = field(default_factory=dict)
    """The run's ``env.json`` artifact (versions, hardware), restricted to ENVIRONMENT_KEYS."""

    def tag(self, name: str, default: Any = None) -> Any:
        return self.tags.get(TAG + name, default)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the raw data a report folder keeps so the report can be verified offline."""
        return {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "status": self.status,
            "start_time": self.start_time,
            "params": dict(sorted(self.params.items())),
            "tags": dict(sorted(self.tags.items())),
            "metrics": dict(sorted(self.metrics.items())),
            "histories": {k: [[int(s), float(v)] for s, v in h] for k, h in sorted(self.histories.items())},
            "environment": self.environment,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        return cls(
            run_id=data["run_id"],
            experiment_id=data["experiment_id"],
            status=data["status"],
            start_time=int(data["start_time"]),
            params=dict(data["params"]),
            tags=dict(data["tags"]),
            metrics={k: float(v) for k, v in data["metrics"].items()},
            histories={k: [(int(s), float(v)) for s, v in h] for k, h in data.get("histories", {}).items()},
            environment=dict(data.get("environment", {})),
        )


# What a report keeps of each run's env.json: versions and hardware (no paths, no settings).
ENVIRONMENT_KEYS = ("python", "platform", "torch", "cuda", "cudnn", "driver", "device_name", "gpu_count",
                    "cpu_model", "cpu_count", "torch_threads", "load_average", "packages")


def _environment(mlflow_client, run_id: str) -> dict[str, Any]:
    try:
        with tempfile.TemporaryDirectory(prefix="bakeoff-report-env-") as folder:
            path = mlflow_client.download_artifacts(run_id, "env.json", folder)
            environment = json.loads(Path(path).read_text())
    except Exception:  # an older run without the artifact: the tags still carry torch/CUDA/device
        return {}
    return {k: environment[k] for k in ENVIRONMENT_KEYS if k in environment}


def kept_tags(tags: dict[str, str]) -> dict[str, str]:
    """The tags a record keeps: bakeoff's own and the run's note (MLflow's bookkeeping tags are left out,
    so a record read from the store equals the one built from the same payload)."""
    return {k: v for k, v in tags.items() if k.startswith(TAG) or k == "mlflow.note.content"}


def _record(mlflow_client, run, with_histories: bool) -> RunRecord:
    record = RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        params=dict(run.data.params),
        tags=kept_tags(dict(run.data.tags)),
        metrics=dict(run.data.metrics),
    )
    if with_histories:
        for key in STEP_METRICS:
            if key in record.metrics:
                history = mlflow_client.get_metric_history(record.run_id, key)
                record.histories[key] = sorted((m.step, m.value) for m in history)
        record.environment = _environment(mlflow_client, record.run_id)
    return record


def record_of(payload: Payload, environment: dict[str, Any], *, run_id: str, experiment_id: str) -> RunRecord:
    """The record of a run written from ``payload``: what the store returns for it, without asking the store."""
    return RunRecord(
        run_id=run_id,
        experiment_id=experiment_id,
        status=payload.status,
        start_time=payload.start_ms,
        params=dict(payload.params),
        tags=kept_tags(payload.tags),
        metrics=payload.latest_metrics(),
        histories=payload.histories(STEP_METRICS),
        environment={k: environment[k] for k in ENVIRONMENT_KEYS if k in environment},
    )


def records_from_results(results: list, results_dir: Path | None = None) -> list[RunRecord]:
    """RunRecords exactly as logging these results would store them, without MLflow (offline previews, tests).

    Verdicts come from the same parity stage a logging pass runs; run ids are derived from the spec
    id and the result digest (MLflow's own ids are random), start times from the results.
    """
    typed = [r if isinstance(r, Result) else Result.from_dict(r) for r in results]
    verdicts = parity.stage(typed, typed, weights=parity.weights_from([Path(results_dir or ".")]))
    records = []
    for result in typed:
        payload = payload_of(result, suite="offline", parity=verdicts.get(result.spec_id))
        records.append(record_of(payload, result.environment, run_id=f"offline-{result.spec_id}-{result.digest}",
                                 experiment_id="offline"))
    return records


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
        found = search_kind(mlflow_client, experiment.experiment_id, KIND_RESULT)
        if selection.run_ids:
            by_id = {run.info.run_id: run for run in found}
            missing = [run_id for run_id in selection.run_ids if run_id not in by_id]
            if missing:
                raise SourceError(f"run {missing[0]} is not a result run of experiment {name!r}")
            runs = [by_id[run_id] for run_id in selection.run_ids]
        else:
            runs = newest_per_spec(found)
        suites = sorted({r.data.tags.get(TAG + "suite", "") for r in runs})
        origin["suite"] = selection.suite or (suites[0] if len(suites) == 1 else None)
    if not runs:
        raise SourceError(f"{selection.describe()} holds no bakeoff result runs")
    return [_record(mlflow_client, run, with_histories) for run in runs], origin


def load_cost(uri: str, origin: dict[str, Any]) -> list[dict[str, Any]]:
    """The paired cost records of the report's experiment: the newest per measured thing.

    A report of one bench invocation takes the records logged under that invocation when there are
    any; otherwise (and for a report of the whole experiment) the experiment's newest record per
    cell. A record whose artifact cannot be read is left out (the cost tables then lack that cell).
    """
    from mlflow.exceptions import MlflowException

    from harness.cost import record as cost_record

    if not origin.get("experiment_id"):
        return []
    mlflow_client = client(uri)
    runs = search_kind(mlflow_client, origin["experiment_id"], KIND_COST)
    parent = origin.get("parent_run_id")
    if parent and any(run.data.tags.get("mlflow.parentRunId") == parent for run in runs):
        runs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent]
    newest: dict[str, Any] = {}
    for run in runs:
        key = run.data.tags.get(TAG + "cost_key")
        if key and (key not in newest or (run.info.start_time, run.info.run_id)
                    > (newest[key].info.start_time, newest[key].info.run_id)):
            newest[key] = run
    out = []
    for key in sorted(newest):
        try:
            with tempfile.TemporaryDirectory(prefix="bakeoff-cost-") as folder:
                path = mlflow_client.download_artifacts(newest[key].info.run_id, COST_ARTIFACT, folder)
                record = json.loads(Path(path).read_text(encoding="utf-8"))
            cost_record.validate(record, where=f"cost run {newest[key].info.run_id}")
        except (MlflowException, OSError, ValueError):
            continue
        out.append(record)
    return out
