"""Finished results → MLflow: one experiment per suite, a parent run per invocation, a child per spec.

Only the orchestrator calls this module (``bench`` after the suite, ``ingest`` for result files made
elsewhere); workers never import mlflow, so tracking costs nothing inside the timed loop and a
tracking-store fault cannot lose a result: the files stay on disk for a later ``bakeoff ingest``.

Store: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else an explicit SQLite database at the
repository root with artifacts in a sibling folder. MLflow's own implicit default is never used: with
a ``./mlruns`` folder present it silently switches to the file store, which MLflow 3 refuses.

Idempotency: each child run carries ``bakeoff.spec_id`` and ``bakeoff.result_digest`` (SHA-256 of the
result's canonical JSON); a result whose (spec id, digest) pair is already in the experiment is not
logged again. A changed result for the same spec (e.g. ``--retry-failed``) gets a new run, and
reports take the newest run per spec.

A store that dies part-way through logging a run leaves no half run that counts: a run is tagged
``bakeoff.kind = incomplete`` until its last write, which sets ``result``; the next ``ingest`` logs
that result again in full and deletes the incomplete run.

Parity across invocations: shards of one suite (``bench --shard i/n``) log separately, so a
candidate and its native reference may arrive in the experiment from different processes. Each
invocation compares its results with the partner runs already in the experiment (their
``result.json`` artifacts; weights when the results folder is shared, else the weights digests)
and, after logging, fills in the verdicts of runs that had no reference when they were logged.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import locks
from harness.durations import step_durations_ns
from harness.environment import REPO_ROOT, git_state
from harness.spec import Spec

DEFAULT_TRACKING_URI = f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
ARTIFACTS_FOLDER = "mlartifacts"
EXPERIMENT_PREFIX = "bakeoff-"
TAG = "bakeoff."
KIND_RESULT, KIND_INVOCATION, KIND_INCOMPLETE = "result", "invocation", "incomplete"
INVOCATION_ARTIFACT = "invocation.json"

# MLflow's limits (mlflow.utils.validation); restated so the module imports without mlflow.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
MAX_DATASET_DIGEST = 36

STEP_METRICS = ("loss", "step_time_us", "valid_metric")
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
    "time_to_first_step_s",
    "steps_completed",
    "warmup_steps",
    "eval_every",
    "evals_run",
    "target_metric",
    "steps_to_target",
    "time_to_target_s",
)
RUN_STATUS = {"ok": "FINISHED", "failed": "FAILED", "unsupported": "FINISHED"}

# Names of environment variables whose values must never reach MLflow or a report, even if a
# library printed them into an error message or a worker's output tail.
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE", re.IGNORECASE)
REDACTED = "[redacted]"


class TrackingError(RuntimeError):
    """The tracking store cannot be reached or refused a write; the message is one line for the user."""


# --------------------------------------------------------------------------- store


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the repository's SQLite database."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs`` or ``sqlite:///rel``), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database; the server decides otherwise."""
    database = sqlite_path(uri)
    if database is None:
        return None
    return (database.resolve().parent / ARTIFACTS_FOLDER).as_uri()


def experiment_name(suite: str) -> str:
    return suite if suite.startswith(EXPERIMENT_PREFIX) else EXPERIMENT_PREFIX + suite


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
        problem = f"{type(error).__name__}: {_first_line(error)}"
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
            name, artifact_location=f"{location}/{name}" if location else None, tags={"bakeoff.suite": name}
        )
    except Exception:  # another process created it first
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# --------------------------------------------------------------------------- what a run holds


def result_digest(result: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) over the result's canonical JSON: same file content, same digest."""
    text = json.dumps(result, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables (long enough not to match by accident)."""
    environ = os.environ if environ is None else environ
    return sorted({v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= 6}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " …[truncated]"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


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


def eval_histories(trajectory: Mapping[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Periodic validation (time-to-target) as per-step metric curves, keyed by steps done."""
    histories: dict[str, list[tuple[int, float]]] = {}
    for record in trajectory.get("evals", []):
        for key, name in (("eval_metric", "valid_metric"), ("eval_loss", "valid_loss")):
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                histories.setdefault(name, []).append((int(record["step"]), float(value)))
    return histories


def summary_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    summary = result.get("summary", {})
    metrics = {}
    for key in SUMMARY_METRICS:
        value = summary.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[key] = float(value)
    import_s = result.get("timing", {}).get("adapter_import_s")
    if isinstance(import_s, (int, float)):
        metrics["adapter_import_s"] = float(import_s)
    return metrics


def tags_of(result: Mapping[str, Any], *, suite: str, digest: str, parity: Any = None) -> dict[str, str]:
    spec = result["spec"]
    adapter = result.get("adapter", {})
    environment = result.get("environment", {})
    tags = {
        "spec_id": result["spec_id"],
        "result_digest": digest,
        "kind": KIND_RESULT,
        "suite": suite,
        "label": Spec.from_dict(spec).label,
        "task": spec["task"],
        "adapter": spec["adapter"],
        "style": adapter.get("style"),
        "mode": spec["mode"],
        "precision": spec["precision"],
        "world_size": spec["world_size"],
        "device": spec["device"],
        "library": adapter.get("library") or "torch",
        "library_version": adapter.get("library_version") or environment.get("torch"),
        "git_sha": environment.get("git_sha"),
        "git_dirty": environment.get("git_dirty"),
        "torch": environment.get("torch"),
        "cuda": environment.get("cuda"),
        "device_name": environment.get("device_name"),
        "status": result["status"],
        "error": result.get("error"),
        "weights_digest": result.get("weights_digest"),
        "data_digest": result.get("task", {}).get("data_digest"),
        "metric_name": result.get("task", {}).get("metric_name"),
    }
    if parity is not None:
        tags["parity"] = parity.verdict
        tags["parity_detail"] = parity.describe()
        tags["parity_json"] = parity.to_dict()  # structured, for reports; the detail is for people
    out = {
        TAG + k: _clip(v if isinstance(v, str) else json.dumps(v), MAX_TAG_VALUE)
        for k, v in tags.items()
        if v is not None
    }
    note = result.get("error") or (parity.describe() if parity is not None else None)
    if note:
        out["mlflow.note.content"] = _clip(f"{result['status']}: {note}", MAX_TAG_VALUE)
    return out


def trajectory_csv(result: Mapping[str, Any]) -> str:
    trajectory = result.get("trajectory", {})
    ends, losses = trajectory.get("step_end_ns", []), trajectory.get("losses", [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "loss", "step_end_ns", "step_time_us"])
    for step, (loss, end, duration) in enumerate(zip(losses, ends, step_times_us(ends))):
        writer.writerow([step, "" if loss is None else repr(loss), end, repr(duration)])
    return buffer.getvalue()


# --------------------------------------------------------------------------- parity


def parity_reference(candidate: Mapping[str, Any], results: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The native run this candidate is measured against, or None when it is itself the reference.

    The reference is the native aligned run of the same task/options/seed/steps/lr/precision and
    global batch, first repeat, single process without accumulation when there is one. A repeat of
    the reference is compared with the first repeat (reproducibility); DDP and accumulation runs
    of native with the single-process one.
    """
    from harness.parity import SAME_RUN_FIELDS, global_batch

    spec = candidate["spec"]
    matches = [
        r
        for r in results
        if r["spec"]["adapter"] == "native"
        and r["spec"]["mode"] == "aligned"
        and r["spec_id"] != candidate["spec_id"]
        and all(r["spec"][f] == spec[f] for f in SAME_RUN_FIELDS)
        and global_batch(r["spec"]) == global_batch(spec)
    ]

    def rank(r):
        s = r["spec"]
        return (s["repeat"], s["world_size"], s["grad_accum"], r["status"] != "ok")

    matches.sort(key=rank)
    if not matches:
        return None
    best = matches[0]
    if spec["adapter"] == "native" and spec["mode"] == "aligned" and rank(candidate) <= rank(best):
        return None  # the candidate is the reference itself
    return best


def parity_verdict(reference: Mapping[str, Any], candidate: Mapping[str, Any], results_dir: Path) -> Any:
    """The Verdict of ``candidate`` against ``reference``, weights loaded from ``results_dir`` when there."""
    from harness.parity import Verdict, compare_files

    try:
        return compare_files(reference, candidate, results_dir)
    except (ValueError, KeyError, OSError) as error:
        return Verdict(verdict="not-comparable", reason=f"comparison failed: {error}")


def parity_verdicts(
    results: list[Mapping[str, Any]], results_dir: Path, pool: list[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """spec_id → parity Verdict for every result that has a native reference in ``pool`` (default ``results``)."""
    pool = list(results) if pool is None else pool
    verdicts = {}
    for result in results:
        reference = parity_reference(result, pool)
        if reference is not None:
            verdicts[result["spec_id"]] = parity_verdict(reference, result, results_dir)
    return verdicts


# --------------------------------------------------------------------------- logging


@dataclass
class LogReport:
    experiment_id: str
    parent_run_id: str | None
    logged: dict[str, str] = field(default_factory=dict)
    """spec_id → run id of results logged now."""
    existing: dict[str, str] = field(default_factory=dict)
    """spec_id → run id of results that were already in the store."""
    seconds: float = 0.0
    parity_filled: int = 0
    """Runs (of this or an earlier invocation) whose parity verdict was set after logging."""
    deleted_incomplete: int = 0
    """Half-written runs from a store that died mid-logging, deleted now that their result is in full."""

    @property
    def run_ids(self) -> dict[str, str]:
        return {**self.existing, **self.logged}


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def search_kind(mlflow_client, experiment_id: str, kind: str) -> list[Any]:
    """Every active run of the experiment tagged ``bakeoff.kind = kind``."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [experiment_id], filter_string=f"tags.`{TAG}kind` = '{kind}'", max_results=5000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _key(run) -> tuple[str | None, str | None]:
    tags = run.data.tags
    return tags.get(TAG + "spec_id"), tags.get(TAG + "result_digest")


def existing_results(mlflow_client, experiment_id: str) -> dict[tuple[str, str], Any]:
    """(spec_id, result_digest) → run for every completely logged bakeoff result run in the experiment."""
    return {_key(run): run for run in search_kind(mlflow_client, experiment_id, KIND_RESULT)}


def partner_runs(results: list[Mapping[str, Any]], runs: Iterable[Any]) -> list[Any]:
    """The newest run of each other spec that may be a parity reference of ``results`` or have one among them.

    A cheap filter on the tags (same task and precision; a native aligned run, unless ``results``
    hold one); ``parity_reference`` decides on the full specs.
    """
    ours = {r["spec_id"] for r in results}
    cells = {(r["spec"]["task"], r["spec"]["precision"]) for r in results}
    ours_native = any(r["spec"]["adapter"] == "native" and r["spec"]["mode"] == "aligned" for r in results)

    def may_pair(run) -> bool:
        tags = run.data.tags
        if tags.get(TAG + "spec_id") in ours or (tags.get(TAG + "task"), tags.get(TAG + "precision")) not in cells:
            return False
        return ours_native or (tags.get(TAG + "adapter"), tags.get(TAG + "mode")) == ("native", "aligned")

    return newest_per_spec([run for run in runs if may_pair(run)])


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


def stored_results(mlflow_client, runs: list[Any], cache: dict[str, Any]) -> dict[str, Any]:
    """spec_id → the result a run holds (its ``result.json`` artifact), read once per run id."""
    out = {}
    for run in runs:
        run_id = run.info.run_id
        if run_id not in cache:
            from mlflow.exceptions import MlflowException

            try:
                with tempfile.TemporaryDirectory(prefix="bakeoff-partner-") as folder:
                    path = mlflow_client.download_artifacts(run_id, "result.json", folder)
                    cache[run_id] = json.loads(Path(path).read_text(encoding="utf-8"))
            except (MlflowException, OSError, ValueError):
                cache[run_id] = None  # a run without a readable result.json cannot be compared
        if cache[run_id] is not None:
            out[run.data.tags[TAG + "spec_id"]] = cache[run_id]
    return out


def set_parity(mlflow_client, run_id: str, result: Mapping[str, Any], verdict: Any) -> None:
    """Write a verdict onto a logged run: the same tags (and note) ``tags_of`` gives a run logged with it."""
    tags = tags_of(result, suite="", digest="", parity=verdict)
    secrets = secret_values()
    for name in (TAG + "parity", TAG + "parity_detail", TAG + "parity_json", "mlflow.note.content"):
        mlflow_client.set_tag(run_id, name, redact(tags[name], secrets))


def reconcile_parity(
    mlflow_client,
    experiment_id: str,
    results: list[Mapping[str, Any]],
    results_dir: Path,
    logged_now: Iterable[str],
    cache: dict[str, Any],
) -> int:
    """Verdicts across invocations, after this one logged its runs; returns how many runs got one.

    A run gets a verdict when its reference is in the experiment and it has none (it was logged
    before its reference, by another shard), or when its reference was logged just now. A verdict
    between two of ``results`` was written when the run was logged.
    """
    complete = existing_results(mlflow_client, experiment_id)
    ours = {r["spec_id"]: r for r in results}
    run_of = {spec_id: complete[(spec_id, result_digest(r))] for spec_id, r in ours.items()
              if (spec_id, result_digest(r)) in complete}
    partners = partner_runs(results, complete.values())
    run_of.update({run.data.tags[TAG + "spec_id"]: run for run in partners})
    theirs = stored_results(mlflow_client, partners, cache)
    pool = [*results, *theirs.values()]
    logged_now = set(logged_now)
    filled = 0
    for candidate in pool:
        reference = parity_reference(candidate, pool)
        if reference is None or (candidate["spec_id"] in ours and reference["spec_id"] in ours):
            continue
        run = run_of.get(candidate["spec_id"])
        if run is None or (TAG + "parity" in run.data.tags and reference["spec_id"] not in logged_now):
            continue
        verdict = parity_verdict(reference, candidate, results_dir)
        if run.data.tags.get(TAG + "parity_json") == json.dumps(verdict.to_dict()):
            continue
        set_parity(mlflow_client, run.info.run_id, candidate, verdict)
        filled += 1
    return filled


def log_result(
    mlflow_client,
    experiment_id: str,
    result: Mapping[str, Any],
    *,
    suite: str,
    parent_run_id: str | None = None,
    parity: Any = None,
    digest: str | None = None,
    secrets: list[str] | None = None,
) -> str:
    """Log one finished result as a run; returns its id. A handful of calls, whatever the step count."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    secrets = secret_values() if secrets is None else secrets
    digest = digest or result_digest(result)
    launch_ns = result.get("timing", {}).get("launch_wall_ns")
    start_ms = int(launch_ns // 1_000_000) if launch_ns else int(time.time() * 1000)
    wall_s = result.get("summary", {}).get("wall_s")
    end_ms = start_ms + int(wall_s * 1000) if isinstance(wall_s, (int, float)) else start_ms
    tags = tags_of(result, suite=suite, digest=digest, parity=parity)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags = {k: redact(v, secrets) for k, v in tags.items()}
    tags[TAG + "kind"] = KIND_INCOMPLETE  # becomes KIND_RESULT with the run's last write
    label = tags[TAG + "label"] + ("" if result["status"] == "ok" else f" ({result['status']})")
    # The run is findable (and replaceable) from its first write: a store dying right after
    # create_run must not leave an anonymous empty run behind.
    identity = (TAG + "kind", TAG + "spec_id", TAG + "result_digest", "mlflow.parentRunId")
    first = {k: tags[k] for k in identity if k in tags}
    run = mlflow_client.create_run(experiment_id, start_time=start_ms, run_name=label, tags=first)
    run_id = run.info.run_id

    params = [Param(k, redact(_clip(v, MAX_PARAM_VALUE), secrets)) for k, v in params_of(result["spec"]).items()]
    run_tags = [RunTag(k, v) for k, v in tags.items()]
    metrics = []
    trajectory = result.get("trajectory", {})
    ends = trajectory.get("step_end_ns", [])
    for step, (loss, end, duration) in enumerate(zip(trajectory.get("losses", []), ends, step_times_us(ends))):
        stamp = start_ms + int(end // 1_000_000)
        if loss is not None:
            metrics.append(Metric("loss", float(loss), stamp, step))
        metrics.append(Metric("step_time_us", float(duration), stamp, step))
    for name, history in eval_histories(trajectory).items():
        for done, value in history:
            stamp = start_ms + int(ends[done - 1] // 1_000_000) if 0 < done <= len(ends) else end_ms
            metrics.append(Metric(name, value, stamp, done))
    metrics += [Metric(k, v, end_ms, 0) for k, v in summary_metrics(result).items()]
    # MLflow takes at most 100 params and 100 tags and 1000 entities in all per call: the first
    # call carries the params, the tags and as many metrics as fit; the rest go 1000 at a time.
    head_params, head_tags = params[:MAX_PARAMS_TAGS_PER_BATCH], run_tags[:MAX_PARAMS_TAGS_PER_BATCH]
    room = MAX_ENTITIES_PER_BATCH - len(head_params) - len(head_tags)
    mlflow_client.log_batch(run_id, metrics=metrics[:room], params=head_params, tags=head_tags)
    for extra in _chunks(params[MAX_PARAMS_TAGS_PER_BATCH:], MAX_PARAMS_TAGS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=extra)
    for extra in _chunks(run_tags[MAX_PARAMS_TAGS_PER_BATCH:], MAX_PARAMS_TAGS_PER_BATCH):
        mlflow_client.log_batch(run_id, tags=extra)
    for chunk in _chunks(metrics[room:], MAX_METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=chunk)

    task = result.get("task", {})
    if task.get("data_digest"):
        profile = {"data_digest_sha256": task["data_digest"], "train_samples": task.get("train_samples")}
        dataset = Dataset(
            name=f"{task.get('name', result['spec']['task'])}-train",
            digest=task["data_digest"][:MAX_DATASET_DIGEST],
            source_type="code",
            source=json.dumps({"source": task.get("data_source"), "options": task.get("options", {})}, sort_keys=True),
            profile=json.dumps(profile, sort_keys=True),
        )
        train = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])
        _log_inputs(mlflow_client, run_id, [train])

    with tempfile.TemporaryDirectory(prefix="bakeoff-artifacts-") as folder:
        files = {
            "result.json": json.dumps(result, indent=1, sort_keys=True, default=str) + "\n",
            "env.json": json.dumps(result.get("environment", {}), indent=1, sort_keys=True) + "\n",
            "trajectory.csv": trajectory_csv(result),
        }
        for name, text in files.items():
            (Path(folder) / name).write_text(redact(text, secrets), encoding="utf-8")
        mlflow_client.log_artifacts(run_id, folder)
    mlflow_client.set_terminated(run_id, status=RUN_STATUS[result["status"]], end_time=max(end_ms, start_ms))
    # Last: only now does the run count as logged (existing_results, reports). A store that died
    # before this write leaves an `incomplete` run, which the next ingest replaces.
    mlflow_client.set_tag(run_id, TAG + "kind", KIND_RESULT)
    return run_id


def _log_inputs(mlflow_client, run_id: str, datasets: list, attempts: int = 3) -> None:
    """``log_inputs``, retried when it loses a race on MLflow's dataset table.

    Two processes logging the same dataset into one experiment at once (the shards of a suite)
    both find it missing and both insert it: MLflow's get-or-create is not atomic, so on a
    PostgreSQL store the second insert fails with a unique-key violation and is rolled back.
    Retried, it finds the first process's row and links the run to it.
    """
    for attempt in range(1, attempts + 1):
        try:
            mlflow_client.log_inputs(run_id, datasets=datasets)
            return
        except Exception as error:
            if attempt == attempts or "unique" not in str(error).lower():
                raise
            time.sleep(0.2 * attempt)


def log_results(
    results: list[Mapping[str, Any]],
    *,
    results_dir: Path,
    suite: str,
    uri: str,
    command: str,
    experiment: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> LogReport:
    """Log every result not yet in the store under one parent run; raise TrackingError on failure.

    ``bench`` always records its invocation as a parent run (listing every spec of the suite,
    including those logged by an earlier invocation); ``ingest`` creates one only when it has new
    results, so ingesting twice adds nothing.
    """
    started = time.perf_counter()
    try:
        with _logging_lock(results_dir):
            report = _log_pass(results, results_dir=results_dir, suite=suite, uri=uri, command=command,
                               experiment=experiment, progress=progress)
    except TrackingError:
        raise
    except Exception as error:
        raise TrackingError(f"logging to {uri} failed ({type(error).__name__}: {_first_line(error)})") from error
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _logging_lock(results_dir: Path):
    """One logging pass at a time per results folder.

    Two `bench` (or `ingest`) processes sharing a folder would otherwise both find a result
    missing from the store and both log it; under the lock the second finds the first's runs.
    """
    folder = Path(results_dir)
    if not folder.is_dir():
        yield
        return
    try:
        handle = open(folder / ".tracking.lock", "a")  # noqa: SIM115 (closed below, whichever opened)
    except OSError:  # someone else's or a read-only folder: the lock lives in /tmp, keyed by the folder
        key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        handle = open(Path(tempfile.gettempdir()) / f"bakeoff-tracking-{key}.lock", "a")  # noqa: SIM115
    with handle, locks.exclusive(handle):
        yield  # without flock on this filesystem the pass runs unlocked (the store still dedups per pass)


def _log_pass(
    results: list[Mapping[str, Any]],
    *,
    results_dir: Path,
    suite: str,
    uri: str,
    command: str,
    experiment: str | None,
    progress: Callable[[str], None] | None,
) -> LogReport:
    """One logging pass (under the folder's lock): what is new, the invocation, parity, clean-up."""
    mlflow_client = client(uri)
    experiment_id = get_or_create_experiment(mlflow_client, experiment_name(experiment or suite), uri)
    known = existing_results(mlflow_client, experiment_id)
    incomplete = search_kind(mlflow_client, experiment_id, KIND_INCOMPLETE)
    cache: dict[str, Any] = {}
    theirs = stored_results(mlflow_client, partner_runs(results, known.values()), cache)
    verdicts = parity_verdicts(list(results), results_dir, pool=[*results, *theirs.values()])
    report = LogReport(experiment_id=experiment_id, parent_run_id=None)
    pending = []
    for result in results:
        digest = result_digest(result)
        run = known.get((result["spec_id"], digest))
        if run is None:
            pending.append((result, digest))
            continue
        report.existing[result["spec_id"]] = run.info.run_id
        verdict = verdicts.get(result["spec_id"])
        if verdict is not None and run.data.tags.get(TAG + "parity") != verdict.verdict:
            set_parity(mlflow_client, run.info.run_id, result, verdict)
    if pending or command != "ingest":
        _log_invocation(mlflow_client, experiment_id, results, pending, verdicts, report,
                        results_dir=results_dir, suite=suite, command=command, progress=progress)
    report.parity_filled = reconcile_parity(mlflow_client, experiment_id, list(results), results_dir,
                                            report.logged, cache)
    # Runs a dead store left half-written, now that their result is in the store in full.
    complete = set(known) | {(r["spec_id"], result_digest(r)) for r in results if r["spec_id"] in report.logged}
    for run in incomplete:
        if _key(run) in complete:
            mlflow_client.delete_run(run.info.run_id)
            report.deleted_incomplete += 1
    return report


def _log_invocation(
    mlflow_client,
    experiment_id: str,
    results: list[Mapping[str, Any]],
    pending: list[tuple[Mapping[str, Any], str]],
    verdicts: dict[str, Any],
    report: LogReport,
    *,
    results_dir: Path,
    suite: str,
    command: str,
    progress: Callable[[str], None] | None,
) -> None:
    """The invocation's parent run and a child run per pending result, filling ``report``."""
    secrets = secret_values()
    git = git_state()
    parent = mlflow_client.create_run(
        experiment_id,
        run_name=f"{command} {suite} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC",
        tags={
            TAG + "kind": KIND_INVOCATION,
            TAG + "command": command,
            TAG + "suite": suite,
            TAG + "results_dir": redact(str(results_dir), secrets),
            TAG + "git_sha": str(git.get("git_sha")),
            TAG + "git_dirty": json.dumps(git.get("git_dirty")),
        },
    )
    report.parent_run_id = parent.info.run_id
    for index, (result, digest) in enumerate(pending, start=1):
        run_id = log_result(
            mlflow_client,
            experiment_id,
            result,
            suite=suite,
            parent_run_id=report.parent_run_id,
            parity=verdicts.get(result["spec_id"]),
            digest=digest,
            secrets=secrets,
        )
        report.logged[result["spec_id"]] = run_id
        if progress:
            progress(f"[{index}/{len(pending)}] logged {result['spec_id']} as run {run_id}")
    from mlflow.entities import Metric

    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        report.parent_run_id,
        metrics=[Metric(f"runs_{status}", float(n), now, 0) for status, n in sorted(counts.items())]
        + [Metric("runs_logged_now", float(len(report.logged)), now, 0)],
    )
    invocation = {
        "suite": suite,
        "command": command,
        "spec_ids": [r["spec_id"] for r in results],
        "runs": report.run_ids,
    }
    with tempfile.TemporaryDirectory(prefix="bakeoff-invocation-") as folder:
        (Path(folder) / INVOCATION_ARTIFACT).write_text(json.dumps(invocation, indent=1, sort_keys=True))
        mlflow_client.log_artifacts(report.parent_run_id, folder)
    mlflow_client.set_terminated(report.parent_run_id, status="FINISHED")


def read_result_dir(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every valid result file in ``folder`` (sorted by name) and one line per file that is not."""
    from harness.result import ResultError, read_result

    results, problems = [], []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            results.append(read_result(path))
        except ResultError as error:
            problems.append(str(error))
    return results, problems
