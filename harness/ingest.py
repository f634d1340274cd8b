"""Finished results → MLflow: one experiment per suite, a parent run per invocation, a child per spec.

``bench`` calls this after its suite, ``ingest`` for result files made elsewhere. One logging pass
(under a lock per results folder, so two processes never log a result twice):

1. read what the experiment holds: completely logged runs by (spec id, result digest), runs a
   dying store left half-written;
2. fetch the ``result.json`` of the store's runs that can be parity partners of these results,
   once each;
3. compute every verdict of the whole pool once (:func:`harness.parity.stage`);
4. log the results the store does not hold yet, under a parent run for this invocation (none
   when there is nothing to log), and write verdicts that changed onto runs already there;
5. delete half-written runs whose result is now in the store in full.

Idempotency: a result whose (spec id, digest) pair is in the experiment is not logged again; a
changed result for the same spec (``--retry-failed``) gets a new run, and reports take the newest
run per spec. A run is tagged ``bakeoff.kind = incomplete`` until its last write, so a store that
dies part-way leaves nothing that counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import locks, parity
from harness.cost import record as cost_record
from harness.cost.analysis import worse_arm
from harness.environment import git_state
from harness.payload import (
    KIND_COST,
    KIND_COST_INCOMPLETE,
    KIND_INCOMPLETE,
    KIND_INVOCATION,
    KIND_RESULT,
    TAG,
    Payload,
    parity_tags,
    payload_of,
    redact,
    secret_values,
)
from harness.result import Result, ResultError, load_result
from harness.store import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    TrackingError,
    client,
    existing_results,
    experiment_name,
    first_line,
    get_or_create_experiment,
    newest_per_spec,
    run_key,
    search_kind,
    set_view,
)

INVOCATION_ARTIFACT = "invocation.json"
COST_ARTIFACT = "cost.json"


@dataclass
class LogReport:
    experiment_id: str
    parent_run_id: str | None
    logged: dict[str, str] = field(default_factory=dict)
    """spec_id → run id of results logged now."""
    existing: dict[str, str] = field(default_factory=dict)
    """spec_id → run id of results that were already in the store."""
    seconds: float = 0.0
    parity_updated: int = 0
    """Runs already in the store whose verdicts were written or changed by this pass."""
    deleted_incomplete: int = 0
    """Half-written runs from a store that died mid-logging, deleted now that their result is in full."""
    verdicts: dict[str, parity.Parity] = field(default_factory=dict)
    """spec_id → the parity this pass computed (for these results and their partners)."""
    start_ms: dict[str, int] = field(default_factory=dict)
    """spec_id → start time of the run logged now (the store's start time of that run)."""

    @property
    def run_ids(self) -> dict[str, str]:
        return {**self.existing, **self.logged}


def read_result_dir(folder: Path) -> tuple[list[Result], list[str]]:
    """Every valid result file in ``folder`` (sorted by name) and one line per file that is not."""
    results, problems = [], []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            results.append(load_result(path))
        except ResultError as error:
            problems.append(str(error))
    return results, problems


def log_result(
    mlflow_client, experiment_id: str, result: Result | Mapping[str, Any], *, suite: str,
    parent_run_id: str | None = None, verdict: parity.Parity | None = None,
) -> str:
    """Log one result as a run (no parity stage, no invocation run): its payload, written."""
    typed = result if isinstance(result, Result) else Result.from_dict(dict(result))
    payload = payload_of(typed, suite=suite, parity=verdict, now_ms=int(time.time() * 1000))
    return write_payload(mlflow_client, experiment_id, payload, parent_run_id=parent_run_id)


def log_results(
    results: Sequence[Result | Mapping[str, Any]],
    *,
    results_dir: Path,
    suite: str,
    uri: str,
    command: str,
    experiment: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> LogReport:
    """Log every result not yet in the store under one parent run; raise TrackingError on failure."""
    started = time.perf_counter()
    typed = [r if isinstance(r, Result) else Result.from_dict(dict(r)) for r in results]
    try:
        with logging_lock(results_dir):
            report = _log_pass(typed, results_dir=Path(results_dir), suite=suite, uri=uri, command=command,
                               experiment=experiment, progress=progress)
    except TrackingError:
        raise
    except Exception as error:
        raise TrackingError(f"logging to {uri} failed ({type(error).__name__}: {first_line(error)})") from error
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def logging_lock(results_dir: Path):
    """One logging pass at a time per results folder.

    Two processes sharing a folder would otherwise both find a result missing from the store and
    both log it; under the lock the second finds the first's runs.
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


def partner_runs(results: Sequence[Result], runs: Iterable[Any]) -> list[Any]:
    """The newest run of each other spec that may be a parity partner of ``results`` or have one among them.

    A cheap filter on the tags (same task and precision; a native aligned run, unless ``results``
    hold one); :func:`harness.parity.partners` decides on the full specs.
    """
    ours = {r.spec_id for r in results}
    cells = {(r.spec.task, r.spec.precision) for r in results}
    ours_native = any(r.spec.adapter == "native" and r.spec.mode == "aligned" for r in results)

    def may_pair(run) -> bool:
        tags = run.data.tags
        if tags.get(TAG + "spec_id") in ours or (tags.get(TAG + "task"), tags.get(TAG + "precision")) not in cells:
            return False
        return ours_native or (tags.get(TAG + "adapter"), tags.get(TAG + "mode")) == ("native", "aligned")

    return newest_per_spec([run for run in runs if may_pair(run)])


def stored_results(mlflow_client, runs: Sequence[Any]) -> dict[str, tuple[Any, Result]]:
    """spec_id → (run, the result its ``result.json`` artifact holds); runs without a readable one are left out."""
    from mlflow.exceptions import MlflowException

    out = {}
    for run in runs:
        try:
            with tempfile.TemporaryDirectory(prefix="bakeoff-partner-") as folder:
                path = mlflow_client.download_artifacts(run.info.run_id, "result.json", folder)
                result = Result.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (MlflowException, OSError, ValueError):
            continue  # a run without a readable result.json cannot be compared
        out[result.spec_id] = (run, result)
    return out


def _log_pass(
    results: list[Result],
    *,
    results_dir: Path,
    suite: str,
    uri: str,
    command: str,
    experiment: str | None,
    progress: Callable[[str], None] | None,
) -> LogReport:
    mlflow_client = client(uri)
    experiment_id = get_or_create_experiment(mlflow_client, experiment_name(experiment or suite), uri)
    set_view(mlflow_client, experiment_id, int(time.time() * 1000))
    known = existing_results(mlflow_client, experiment_id)
    incomplete = search_kind(mlflow_client, experiment_id, KIND_INCOMPLETE)
    theirs = stored_results(mlflow_client, partner_runs(results, known.values()))
    pool = [*results, *(result for _, result in theirs.values())]
    verdicts = parity.stage(pool, pool, weights=parity.weights_from([results_dir]))
    report = LogReport(experiment_id=experiment_id, parent_run_id=None, verdicts=verdicts)
    pending = []
    stored_runs: list[tuple[Any, str]] = []
    for result in results:
        run = known.get((result.spec_id, result.digest))
        if run is None:
            pending.append(result)
        else:
            report.existing[result.spec_id] = run.info.run_id
            stored_runs.append((run, result.spec_id))
    stored_runs += [(run, spec_id) for spec_id, (run, _) in theirs.items()]
    secrets = secret_values()
    _update_parity(mlflow_client, stored_runs, verdicts, report, secrets)
    if pending:
        _log_invocation(mlflow_client, experiment_id, results, pending, report, suite=suite, command=command,
                        results_dir=results_dir, secrets=secrets, progress=progress)
        _pair_again(mlflow_client, experiment_id, results, set(theirs), report,
                    results_dir=results_dir, secrets=secrets)
    complete = set(known) | {(r.spec_id, r.digest) for r in results if r.spec_id in report.logged}
    for run in incomplete:
        if run_key(run) in complete:
            mlflow_client.delete_run(run.info.run_id)
            report.deleted_incomplete += 1
    return report


def _update_parity(mlflow_client, runs: Sequence[tuple[Any, str]], verdicts: Mapping[str, parity.Parity],
                   report: LogReport, secrets: list[str]) -> None:
    for run, spec_id in runs:
        verdict = verdicts.get(spec_id)
        if verdict is not None and _should_update(run.data.tags, verdict):
            set_parity(mlflow_client, run, verdict, secrets)
            report.parity_updated += 1


def _pair_again(mlflow_client, experiment_id: str, results: list[Result], seen: set[str], report: LogReport, *,
                results_dir: Path, secrets: list[str]) -> None:
    """Pair once more after our runs are written, with partners that reached the store meanwhile.

    Two shards logging at the same moment each miss the other's runs on the first look. Whichever
    finishes writing second sees the first's runs here (each looks only after its own writes), so
    every cross-shard pair gets its verdict without a lock shared between machines.
    """
    known = existing_results(mlflow_client, experiment_id)
    partners = partner_runs(results, known.values())
    if all(run.data.tags.get(TAG + "spec_id") in seen for run in partners):
        return
    theirs = stored_results(mlflow_client, partners)
    pool = [*results, *(result for _, result in theirs.values())]
    verdicts = parity.stage(pool, pool, weights=parity.weights_from([results_dir]))
    ours = [(known[(r.spec_id, r.digest)], r.spec_id) for r in results if (r.spec_id, r.digest) in known]
    _update_parity(mlflow_client, [*ours, *((run, spec_id) for spec_id, (run, _) in theirs.items())],
                   verdicts, report, secrets)
    report.verdicts.update(verdicts)


def _should_update(tags: Mapping[str, str], new: parity.Parity) -> bool:
    """Whether a stored run's verdicts should be replaced by ``new``.

    Yes when they differ, except where ``new`` could only compare weight digests (the weights are
    in another shard's folder) and the stored verdict for that partner came from the weights.
    """
    stored_text = tags.get(TAG + "parity_json")
    if stored_text == new.to_json():
        return False
    stored = parity.Parity.from_json(stored_text)
    if stored is None:
        return True
    for verdict in new.comparisons:
        if verdict.weights_compared or verdict.verdict == "bitwise":
            continue
        before = next((v for v in stored.comparisons if v.against == verdict.against
                       and v.reference == verdict.reference), None)
        if before is not None and before.weights_compared:
            return False
    return True


def set_parity(mlflow_client, run, verdict: parity.Parity, secrets: list[str]) -> None:
    """Write a stored run's verdicts: the same tags and note a run logged with them carries."""
    for name, value in parity_tags(verdict).items():
        _set_tag(mlflow_client, run.info.run_id, TAG + name, redact(value, secrets))
    tags = run.data.tags
    if not tags.get(TAG + "error") and verdict.primary is not None:  # a failed run's note keeps its error
        note = f"{tags.get(TAG + 'status', 'ok')}: {verdict.primary.describe()}"
        _set_tag(mlflow_client, run.info.run_id, "mlflow.note.content", redact(note, secrets))


def _set_tag(mlflow_client, run_id: str, key: str, value: str, attempts: int = 4) -> None:
    """``set_tag`` that survives another shard writing the same tag at the same moment.

    Two shards pairing again after their writes may both update one stored run; on a SQL store the
    second insert of a new tag then fails on the primary key. Written again, it is an update.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow_client.set_tag(run_id, key, value)
            return
        except MlflowException as error:
            text = str(error)
            if attempt == attempts - 1 or not any(word in text for word in ("UniqueViolation", "UNIQUE", "tag_pk")):
                raise
            time.sleep(0.1 * (attempt + 1))


def _log_invocation(
    mlflow_client,
    experiment_id: str,
    results: list[Result],
    pending: list[Result],
    report: LogReport,
    *,
    suite: str,
    command: str,
    results_dir: Path,
    secrets: list[str],
    progress: Callable[[str], None] | None,
) -> None:
    """The invocation's parent run and a child run per pending result, filling ``report``."""
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
    for index, result in enumerate(pending, start=1):
        payload = payload_of(result, suite=suite, parity=report.verdicts.get(result.spec_id), secrets=secrets,
                             now_ms=int(time.time() * 1000))
        report.logged[result.spec_id] = write_payload(mlflow_client, experiment_id, payload,
                                                      parent_run_id=report.parent_run_id)
        report.start_ms[result.spec_id] = payload.start_ms
        if progress:
            progress(f"[{index}/{len(pending)}] logged {result.spec_id} as run {report.logged[result.spec_id]}")
    from mlflow.entities import Metric

    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        report.parent_run_id,
        metrics=[Metric(f"runs_{status}", float(n), now, 0) for status, n in sorted(counts.items())]
        + [Metric("runs_logged_now", float(len(report.logged)), now, 0)],
    )
    invocation = {"suite": suite, "command": command, "spec_ids": [r.spec_id for r in results],
                  "runs": report.run_ids}
    with tempfile.TemporaryDirectory(prefix="bakeoff-invocation-") as folder:
        (Path(folder) / INVOCATION_ARTIFACT).write_text(json.dumps(invocation, indent=1, sort_keys=True))
        mlflow_client.log_artifacts(report.parent_run_id, folder)
    mlflow_client.set_terminated(report.parent_run_id, status="FINISHED")


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_payload(mlflow_client, experiment_id: str, payload: Payload, *, parent_run_id: str | None = None) -> str:
    """Write one payload as a run; returns its id. A handful of calls, whatever the step count."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    tags = dict(payload.tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags[TAG + "kind"] = KIND_INCOMPLETE  # becomes KIND_RESULT with the run's last write
    # The run is findable (and replaceable) from its first write: a store dying right after
    # create_run must not leave an anonymous empty run behind.
    identity = (TAG + "kind", TAG + "spec_id", TAG + "result_digest", "mlflow.parentRunId")
    first = {k: tags[k] for k in identity if k in tags}
    run = mlflow_client.create_run(experiment_id, start_time=payload.start_ms, run_name=payload.run_name, tags=first)
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in payload.params.items()]
    run_tags = [RunTag(k, v) for k, v in tags.items()]
    metrics = [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in payload.metrics]
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
    if payload.dataset is not None:
        dataset = Dataset(source_type="code", **payload.dataset)
        train = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "train")])
        log_inputs(mlflow_client, run_id, [train])
    with tempfile.TemporaryDirectory(prefix="bakeoff-artifacts-") as folder:
        for name, text in payload.artifacts.items():
            (Path(folder) / name).write_text(text, encoding="utf-8")
        mlflow_client.log_artifacts(run_id, folder)
    mlflow_client.set_terminated(run_id, status=payload.status, end_time=payload.end_ms)
    # Last: only now does the run count as logged (existing_results, reports). A store that died
    # before this write leaves an `incomplete` run, which the next ingest replaces.
    mlflow_client.set_tag(run_id, TAG + "kind", KIND_RESULT)
    return run_id


def log_inputs(mlflow_client, run_id: str, datasets: list, attempts: int = 3) -> None:
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


@dataclass
class CostLogReport:
    experiment_id: str
    logged: int = 0
    existing: int = 0


def cost_digest(record: Mapping[str, Any]) -> str:
    """16 hex digits over the publishable record: the same measurement, the same digest."""
    text = json.dumps(cost_record.publishable(dict(record)), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_cost_records(
    records: Sequence[Mapping[str, Any]], *, uri: str, experiment: str, suite: str,
    parent_run_id: str | None = None,
) -> CostLogReport:
    """Log paired cost records (``bakeoff.cost/1``) as runs of kind ``cost``; ones already there are skipped.

    Each run carries the record (machine paths stripped, secrets redacted) as ``cost.json``, the cell's
    identity as tags and its headline figures as metrics, so the MLflow UI can sort by overhead.
    """
    from mlflow.entities import Metric

    mlflow_client = client(uri)
    experiment_id = get_or_create_experiment(mlflow_client, experiment, uri)
    known = {run.data.tags.get(TAG + "cost_digest") for run in search_kind(mlflow_client, experiment_id, KIND_COST)}
    report = CostLogReport(experiment_id=experiment_id)
    secrets = secret_values()
    for record in records:
        digest = cost_digest(record)
        if digest in known:
            report.existing += 1
            continue
        clean = cost_record.publishable(dict(record))
        cell = clean.get("cell") or {}
        tags = {TAG + "kind": KIND_COST_INCOMPLETE, TAG + "cost_kind": clean["kind"],
                TAG + "cost_key": cost_record.key_of(clean), TAG + "cost_digest": digest, TAG + "suite": suite,
                TAG + "status": clean["status"]}
        for name in ("task", "adapter", "mode", "precision"):
            if cell.get(name) is not None:
                tags[TAG + name] = str(cell[name])
        if clean.get("library"):
            tags[TAG + "library"] = str(clean["library"])
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        name = f"cost/{clean['kind']} {cell.get('label') or clean.get('library') or ''}".strip()
        run = mlflow_client.create_run(experiment_id, run_name=name[:250],
                                       tags={k: redact(v, secrets) for k, v in tags.items()})
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, 0) for key, value in _cost_metrics(clean).items()]
        mlflow_client.log_batch(run.info.run_id, metrics=metrics)
        with tempfile.TemporaryDirectory(prefix="bakeoff-cost-") as folder:
            text = json.dumps(clean, indent=1, sort_keys=True, allow_nan=False)
            (Path(folder) / COST_ARTIFACT).write_text(redact(text, secrets), encoding="utf-8")
            mlflow_client.log_artifacts(run.info.run_id, folder)
        mlflow_client.set_terminated(run.info.run_id, status="FINISHED" if clean["status"] != "failed" else "FAILED")
        mlflow_client.set_tag(run.info.run_id, TAG + "kind", KIND_COST)  # last: now it counts as logged
        known.add(digest)
        report.logged += 1
    return report


def _cost_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    summary = record.get("summary") or {}
    out: dict[str, float] = {}
    for clock in ("wall", "thread"):
        for name, key in (("difference", f"{clock}_overhead_us"), ("ratio", f"{clock}_ratio"),
                          ("native", f"{clock}_native_us")):
            value = ((summary.get(clock) or {}).get(name) or {}).get("value")
            if isinstance(value, (int, float)):
                out[key] = value
    syncs = (record.get("syncs") or {}).get("adapter") or {}
    if isinstance(syncs.get("per_step"), (int, float)):
        out["syncs_per_step"] = syncs["per_step"]
    per_step = summary.get("difference_per_step")
    if record.get("kind") == "instructions" and isinstance(per_step, (int, float)):
        out["instructions_difference_per_step"] = per_step
        for name in ("repeatability", "layout_spread"):
            worst = worse_arm(summary.get(name))  # the worse arm's (max - min) / mean
            if worst is not None:
                out[f"instructions_{name}"] = worst
    return out
