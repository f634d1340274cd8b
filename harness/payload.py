"""What one result becomes in MLflow: params, tags, metrics, a dataset input and artifacts. Pure.

:func:`payload_of` maps a :class:`~harness.result.Result` (and its parity) to a :class:`Payload`
without touching a store. ``harness.ingest`` writes payloads; the report's file source turns the
same payloads into run records, so a report built from result files and one built from the store
hold the same figures by construction.

Every text that leaves here passes :func:`redact`: values of secret-looking environment variables
never reach a param, a tag, a note or an artifact, even when a library printed one into an error.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness import coverage
from harness.durations import step_durations_ns
from harness.parity import Parity
from harness.result import Result

TAG = "bakeoff."
KIND_RESULT, KIND_INVOCATION, KIND_INCOMPLETE = "result", "invocation", "incomplete"
KIND_COST, KIND_COST_INCOMPLETE = "cost", "cost-incomplete"
"""A paired cost record (``bakeoff.cost/1``); a cost run is ``cost-incomplete`` until its last write."""

# MLflow's limits (mlflow.utils.validation), restated so this module imports without mlflow.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_DATASET_DIGEST = 36

STEP_METRICS = ("loss", "step_time_us", "valid_metric")
"""Per-step metrics the report reads back as histories."""
SUMMARY_METRICS = (
    "median_step_us",
    "throughput_samples_per_s",
    "peak_memory_bytes",
    "final_loss",
    "eval_loss",
    "eval_metric",
    "wall_s",
    "fit_s",
    "startup_s",
    "launch_s",
    "library_startup_s",
    "time_to_first_step_s",
    "steps_completed",
    "warmup_steps",
    "eval_every",
    "evals_run",
    "target_metric",
    "steps_to_target",
    "time_to_target_s",
    "compile_s",
    "compile_events",
    "compile_setup_s",
    "flops_per_step",
    "achieved_flops_per_s",
    "peak_flops_per_s",
    "mfu",
)
RUN_STATUS = {"ok": "FINISHED", "failed": "FAILED", "unsupported": "FINISHED"}

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
"""Names of environment variables whose values must never reach MLflow or a report."""
REDACTED = "[redacted]"


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (long enough not to match by accident)."""
    environ = os.environ if environ is None else environ
    return sorted({v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 6}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " …[truncated]"


@dataclass(frozen=True, kw_only=True)
class MetricPoint:
    key: str
    value: float
    timestamp_ms: int
    step: int


@dataclass(frozen=True, kw_only=True)
class Payload:
    """Everything one result's MLflow run holds, before any store is involved."""

    run_name: str
    start_ms: int
    end_ms: int
    status: str
    """MLflow's run status: FINISHED or FAILED."""
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[MetricPoint]
    dataset: dict[str, str] | None
    """name, digest, source and profile of the training data (MLflow's dataset input), when known."""
    artifacts: dict[str, str] = field(default_factory=dict)
    """file name → text."""

    def latest_metrics(self) -> dict[str, float]:
        """What MLflow shows as a run's metrics: the value at the highest step of each key."""
        latest: dict[str, tuple[int, int, float]] = {}
        for point in self.metrics:
            seen = latest.get(point.key)
            if seen is None or (point.step, point.timestamp_ms) >= seen[:2]:
                latest[point.key] = (point.step, point.timestamp_ms, point.value)
        return {key: value for key, (_, _, value) in latest.items()}

    def histories(self, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        wanted = set(keys)
        found: dict[str, list[tuple[int, float]]] = {}
        for point in self.metrics:
            if point.key in wanted:
                found.setdefault(point.key, []).append((point.step, point.value))
        return {key: sorted(values) for key, values in found.items()}


def params_of(spec: Mapping[str, Any]) -> dict[str, str]:
    """The spec as MLflow params: one per field, task options flattened to ``options.<name>``."""
    params = {}
    for key, value in sorted(spec.items()):
        if key == "options":
            for name, option in sorted(value.items()):
                params[f"options.{name}"] = json.dumps(option)
        else:
            params[key] = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    return params


def step_times_us(step_end_ns: list[int]) -> list[float]:
    """Each step's duration in µs: the first from fit start, the rest between consecutive step ends."""
    return [d / 1e3 for d in step_durations_ns(step_end_ns)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def eval_histories(trajectory: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Periodic validation (time-to-target) as per-step metric curves, keyed by steps done."""
    histories: dict[str, list[tuple[int, float]]] = {}
    for record in trajectory.get("evals", []):
        for key, name in (("eval_metric", "valid_metric"), ("eval_loss", "valid_loss")):
            value = record.get(key)
            if _number(value):
                histories.setdefault(name, []).append((int(record["step"]), float(value)))
    return histories


def summary_metrics(result: Result) -> dict[str, float]:
    metrics = {key: float(result.summary[key]) for key in SUMMARY_METRICS if _number(result.summary.get(key))}
    import_s = result.extra.get("timing", {}).get("adapter_import_s")
    if _number(import_s):
        metrics["adapter_import_s"] = float(import_s)
    return metrics


def run_name(result: Result) -> str:
    """A short name that tells runs apart in MLflow's table: adapter and mode first, repeat always shown.

    ``lightning/aligned digits bf16 ws2 s0 r1``; the full spec is in the params and the label tag.
    """
    spec = result.spec
    options = ",".join(f"{k}={v}" for k, v in spec.options.items())
    parts = [f"{spec.adapter}/{spec.mode}", spec.task + (f"[{options}]" if options else ""),
             spec.precision.removesuffix("-mixed")]
    if spec.world_size > 1:
        parts.append(f"ws{spec.world_size}")
    if spec.grad_accum > 1:
        parts.append(f"acc{spec.grad_accum}")
    parts += [f"s{spec.seed}", f"r{spec.repeat}"]
    return " ".join(parts) + ("" if result.ok else f" ({result.status})")


def tags_of(result: Result, *, suite: str, parity: Parity | None = None) -> dict[str, str]:
    """The run's tags (``bakeoff.*`` and MLflow's note), clipped to MLflow's limit, not yet redacted."""
    spec, adapter, environment = result.spec, result.adapter, result.environment
    tags: dict[str, Any] = {
        "spec_id": result.spec_id,
        "result_digest": result.digest,
        "kind": KIND_RESULT,
        "suite": suite,
        "label": spec.label,
        "task": spec.task,
        "adapter": spec.adapter,
        "style": adapter.get("style"),
        "mode": spec.mode,
        "precision": spec.precision,
        "world_size": spec.world_size,
        "device": spec.device,
        "library": adapter.get("library") or "torch",
        "library_version": adapter.get("library_version") or environment.get("torch"),
        "git_sha": environment.get("git_sha"),
        "git_dirty": environment.get("git_dirty"),
        "torch": environment.get("torch"),
        "cuda": environment.get("cuda"),
        "device_name": environment.get("device_name"),
        "status": result.status,
        "error": result.error,
        "weights_digest": result.weights_digest,
        "data_digest": result.task.get("data_digest"),
        "metric_name": result.task.get("metric_name"),
        "declared_parity": result.declared_parity,
        "precision_impl": result.notes.get("precision_impl"),
        "skipped_steps": result.notes.get("skipped_steps"),
        "precision_route": result.notes.get("precision_route"),
        "coverage": coverage.describe(result.extra["coverage"]) if "coverage" in result.extra else None,
        "launch": result.extra.get("timing", {}).get("launch"),
    }
    tags.update(parity_tags(parity))
    out = {TAG + k: clip(v if isinstance(v, str) else json.dumps(v), MAX_TAG_VALUE) for k, v in tags.items()
           if v is not None}
    note = result.error or (parity.primary.describe() if parity is not None and parity.primary else None)
    if note:
        out["mlflow.note.content"] = clip(f"{result.status}: {note}", MAX_TAG_VALUE)
    return out


def parity_tags(parity: Parity | None) -> dict[str, str]:
    """``parity`` (the headline verdict, a column in the MLflow UI), its one-line description for people,
    and ``parity_json``, the structured form every reader uses."""
    if parity is None or parity.primary is None:
        return {}
    return {"parity": parity.primary.verdict, "parity_detail": parity.primary.describe(),
            "parity_json": parity.to_json()}


def trajectory_csv(result: Result) -> str:
    ends, losses = result.step_end_ns, result.losses
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "loss", "step_end_ns", "step_time_us"])
    for step, (loss, end, duration) in enumerate(zip(losses, ends, step_times_us(ends))):
        writer.writerow([step, "" if loss is None else repr(loss), end, repr(duration)])
    return buffer.getvalue()


def _times(result: Result, fallback_ms: int) -> tuple[int, int]:
    """(start, end) in ms since the epoch: launch to launch + wall time; ``fallback_ms`` without a launch time."""
    launch_ns = result.extra.get("timing", {}).get("launch_wall_ns")
    start_ms = int(launch_ns // 1_000_000) if launch_ns else fallback_ms
    wall_s = result.summary.get("wall_s")
    end_ms = start_ms + int(wall_s * 1000) if _number(wall_s) else start_ms
    return start_ms, max(end_ms, start_ms)


def metric_points(result: Result, start_ms: int, end_ms: int) -> list[MetricPoint]:
    points = []
    ends = result.step_end_ns
    for step, (loss, end, duration) in enumerate(zip(result.losses, ends, step_times_us(ends))):
        stamp = start_ms + int(end // 1_000_000)
        if loss is not None:
            points.append(MetricPoint(key="loss", value=float(loss), timestamp_ms=stamp, step=step))
        points.append(MetricPoint(key="step_time_us", value=float(duration), timestamp_ms=stamp, step=step))
    for name, history in eval_histories(result.trajectory).items():
        for done, value in history:
            stamp = start_ms + int(ends[done - 1] // 1_000_000) if 0 < done <= len(ends) else end_ms
            points.append(MetricPoint(key=name, value=value, timestamp_ms=stamp, step=done))
    points += [MetricPoint(key=k, value=v, timestamp_ms=end_ms, step=0) for k, v in summary_metrics(result).items()]
    return points


def dataset_of(result: Result) -> dict[str, str] | None:
    task = result.task
    if not task.get("data_digest"):
        return None
    profile = {"data_digest_sha256": task["data_digest"], "train_samples": task.get("train_samples")}
    return {
        "name": f"{task.get('name', result.spec.task)}-train",
        "digest": task["data_digest"][:MAX_DATASET_DIGEST],
        "source": json.dumps({"source": task.get("data_source"), "options": task.get("options", {})}, sort_keys=True),
        "profile": json.dumps(profile, sort_keys=True),
    }


def payload_of(
    result: Result,
    *,
    suite: str,
    parity: Parity | None = None,
    secrets: list[str] | None = None,
    now_ms: int = 0,
) -> Payload:
    """The run a result becomes: a pure function of the result, its parity and the suite's name.

    The run starts at the result's launch time; ``now_ms`` stands in for a result that has none
    (one the orchestrator wrote, e.g. ``unsupported``): the logging pass passes the current time.
    """
    secrets = secret_values() if secrets is None else secrets
    start, end = _times(result, now_ms)
    tags = {k: redact(v, secrets) for k, v in tags_of(result, suite=suite, parity=parity).items()}
    document = result.to_dict()
    artifacts = {
        "result.json": json.dumps(document, indent=1, sort_keys=True, default=str) + "\n",
        "env.json": json.dumps(result.environment, indent=1, sort_keys=True) + "\n",
        "trajectory.csv": trajectory_csv(result),
    }
    return Payload(
        run_name=redact(run_name(result), secrets),
        start_ms=start,
        end_ms=end,
        status=RUN_STATUS[result.status],
        params={k: redact(clip(v, MAX_PARAM_VALUE), secrets) for k, v in params_of(result.spec.to_dict()).items()},
        tags=tags,
        metrics=metric_points(result, start, end),
        dataset=dataset_of(result),
        artifacts={name: redact(text, secrets) for name, text in artifacts.items()},
    )
