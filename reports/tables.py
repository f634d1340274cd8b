"""Report tables as pandas DataFrames, built from MLflow run records only.

Every figure here is a value MLflow holds (a run's metric, param or tag), copied, never recomputed,
so the report and the dashboard agree. Derived statistics (bootstrap CIs, overhead ratios, scaling
fits) live in ``reports.analysis``, computed from the same records.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd

from reports.source import RunRecord

# (column, where it comes from) in display order. Sources: metric:<key>, param:<key>, tag:<name>.
COLUMNS: list[tuple[str, str]] = [
    ("task", "tag:task"),
    ("options", "options"),
    ("adapter", "tag:adapter"),
    ("mode", "tag:mode"),
    ("precision", "tag:precision"),
    ("world_size", "tag:world_size"),
    ("grad_accum", "param:grad_accum"),
    ("batch_size", "param:batch_size"),
    ("steps", "param:steps"),
    ("lr", "param:lr"),
    ("seed", "param:seed"),
    ("repeat", "param:repeat"),
    ("device", "tag:device"),
    ("status", "tag:status"),
    ("parity", "tag:parity"),
    ("median_step_us", "metric:median_step_us"),
    ("throughput_samples_per_s", "metric:throughput_samples_per_s"),
    ("peak_memory_bytes", "metric:peak_memory_bytes"),
    ("final_loss", "metric:final_loss"),
    ("eval_metric", "metric:eval_metric"),
    ("metric_name", "tag:metric_name"),
    ("eval_loss", "metric:eval_loss"),
    ("wall_s", "metric:wall_s"),
    ("fit_s", "metric:fit_s"),
    ("startup_s", "metric:startup_s"),
    ("library_startup_s", "metric:library_startup_s"),
    ("launch", "tag:launch"),
    ("compile_s", "metric:compile_s"),
    ("flops_per_step", "metric:flops_per_step"),
    ("mfu", "metric:mfu"),
    ("warmup_steps", "metric:warmup_steps"),
    ("eval_every", "metric:eval_every"),
    ("evals_run", "metric:evals_run"),
    ("steps_to_target", "metric:steps_to_target"),
    ("time_to_target_s", "metric:time_to_target_s"),
    ("weights_digest", "tag:weights_digest"),
    ("library", "tag:library"),
    ("library_version", "tag:library_version"),
    ("spec_id", "tag:spec_id"),
    ("run_id", "run_id"),
    ("error", "tag:error"),
    ("parity_detail", "tag:parity_detail"),
    ("parity_json", "tag:parity_json"),
    ("declared_parity", "tag:declared_parity"),
    ("precision_impl", "tag:precision_impl"),
    ("precision_route", "tag:precision_route"),
    ("coverage", "tag:coverage"),
    ("style", "tag:style"),
]
NUMERIC = {
    "median_step_us", "throughput_samples_per_s", "peak_memory_bytes", "final_loss", "eval_metric", "eval_loss",
    "wall_s", "fit_s", "startup_s", "lr", "time_to_target_s", "library_startup_s", "compile_s", "flops_per_step",
    "mfu",
}
INTEGER = {
    "world_size", "grad_accum", "batch_size", "steps", "seed", "repeat", "warmup_steps", "eval_every", "evals_run",
    "steps_to_target",
}
SORT = [
    "task", "options", "precision", "world_size", "grad_accum", "adapter_order", "adapter", "mode", "seed", "repeat",
    "batch_size", "steps", "lr", "spec_id", "run_id",
]


def _options(record: RunRecord) -> str:
    options = {k.removeprefix("options."): json.loads(v) for k, v in record.params.items() if k.startswith("options.")}
    return ",".join(f"{k}={v}" for k, v in sorted(options.items()))


def _value(record: RunRecord, source: str) -> Any:
    if source == "run_id":
        return record.run_id
    if source == "options":
        return _options(record)
    kind, _, key = source.partition(":")
    if kind == "metric":
        return record.metrics.get(key)
    if kind == "param":
        return record.params.get(key)
    return record.tag(key)


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: task × adapter × precision × world size (× seed, repeat) with its figures."""
    rows = [{column: _value(record, source) for column, source in COLUMNS} for record in records]
    frame = pd.DataFrame(rows, columns=[c for c, _ in COLUMNS])
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in INTEGER:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame["adapter_order"] = (frame["adapter"] != "native").astype(int)  # native first in every cell
    frame["options_order"] = frame["options"].map(_natural)  # width=16 before width=1024
    sort = ["options_order" if c == "options" else c for c in SORT]
    frame = frame.sort_values(sort, kind="stable").drop(columns=["adapter_order", "options_order"])
    frame = frame.reset_index(drop=True)
    return frame


def _natural(text: Any) -> str:
    """Sort key that orders embedded numbers by value (zero-padded)."""
    return re.sub(r"\d+", lambda m: m.group().zfill(12), str(text or ""))


def run_label(row: pd.Series | dict[str, Any]) -> str:
    """Short name of a run inside one task's plot: what varies across adapters and cells."""
    parts = [row["adapter"], row["mode"], row["precision"]]
    if int(row["world_size"]) > 1:
        parts.append(f"ws{row['world_size']}")
    if int(row["grad_accum"]) > 1:
        parts.append(f"acc{row['grad_accum']}")
    if int(row["seed"]):
        parts.append(f"s{row['seed']}")
    if int(row["repeat"]):
        parts.append(f"r{row['repeat']}")
    return " ".join(str(p) for p in parts)


def task_key(row: pd.Series | dict[str, Any]) -> str:
    return row["task"] + (f"[{row['options']}]" if row["options"] else "")


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["status"].value_counts().sort_index().items()}


def parity_counts(frame: pd.DataFrame) -> dict[str, int]:
    known = frame["parity"].dropna()
    return {str(k): int(v) for k, v in known.value_counts().sort_index().items()}


def provenance(records: list[RunRecord]) -> dict[str, list[str]]:
    """The distinct code versions, libraries and machines the runs came from."""
    keys = {
        "git_sha": "git_sha",
        "git_dirty": "git_dirty",
        "torch": "torch",
        "cuda": "cuda",
        "device_name": "device_name",
    }
    found: dict[str, set[str]] = {name: set() for name in keys}
    found["libraries"] = set()
    for record in records:
        for name, tag in keys.items():
            value = record.tag(tag)
            if value is not None:
                found[name].add(value)
        if record.tag("library") and record.tag("library_version"):
            found["libraries"].add(f"{record.tag('library')} {record.tag('library_version')}")
    return {name: sorted(values) for name, values in found.items()}


def step_series(records: list[RunRecord], key: str) -> dict[str, list[tuple[int, float]]]:
    """run_id → the per-step metric as logged in MLflow."""
    return {record.run_id: record.histories.get(key, []) for record in records}
