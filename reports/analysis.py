"""The report's derived tables: overhead with CIs, scaling decomposition, defaults vs aligned, parity, reproducibility.

Everything here is a pure function of the run records (what MLflow holds) and the task declarations
snapshotted next to them, with seeded bootstraps, so ``bakeoff report --verify`` can recompute every
figure from the raw data kept in the report folder and get the same numbers.

Step statistics pool a cell's repeats (seed and repeat vary, everything else is fixed) and resample at
two levels (repeats, then steps within each: ``harness.stats``), because on shared machines the spread
between processes dwarfs the spread within one. Every figure states how many repeats it rests on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness import stats
from harness.cells import Cell
from harness.durations import after_warmup
from harness.parity import DECLARED, REPEAT, SINGLE_PROCESS, VERDICTS, Parity, Verdict
from reports.inference import inference_table as rows_of
from reports.source import RunRecord

LOW_PRECISIONS = ("bf16-mixed", "fp16-mixed", "bf16", "fp16")


@dataclass(frozen=True)
class Column:
    key: str
    heading: str
    low: str | None = None
    """Key of the CI's lower bound: the cell prints ``value [low, high]``."""
    high: str | None = None
    numeric: bool = True
    markup: bool = False
    """The cell holds inline Markdown (links, code) to render, not plain text to escape."""


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "note": self.note, "columns": [c.key for c in self.columns],
                "rows": [clean_row(r) for r in self.rows]}


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: numpy scalars become Python numbers, NaN becomes None; keys sorted."""
    out = {}
    for key in sorted(row):
        value = row[key]
        if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
            value = value.item()
        if value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
            value = None
        out[key] = value
    return out


# --------------------------------------------------------------------------- cells and step data


def cell_of(row: pd.Series | dict[str, Any]) -> Cell:
    return Cell(*(_plain(row[name]) for name in Cell._fields))


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def measured_steps_us(record: RunRecord) -> list[float]:
    """Per-step µs after the run's warm-up steps (``harness.durations.after_warmup``)."""
    durations = [v for _, v in record.histories.get("step_time_us", [])]
    kept = after_warmup(durations, int(record.metrics.get("warmup_steps", 0)))
    return [v for v in kept if math.isfinite(v)]


@dataclass
class CellRuns:
    """A cell and its runs."""

    key: Cell
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Every run of the cell (any status), as frame rows."""
    measured: list[tuple[dict[str, Any], list[float]]] = field(default_factory=list)
    """Per ok run with step data: (its row, its measured step times)."""

    @property
    def groups(self) -> list[list[float]]:
        """One group of step times per run (repeat or seed): the bootstrap's first level."""
        return [steps for _, steps in self.measured]

    @property
    def ok_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "ok"]

    def values(self, column: str) -> list[float]:
        return [float(r[column]) for r in self.ok_rows if _plain(r[column]) is not None]


def cells(frame: pd.DataFrame, records: Sequence[RunRecord]) -> dict[Cell, CellRuns]:
    by_run = {r.run_id: r for r in records}
    found: dict[Cell, CellRuns] = {}
    for row in frame.to_dict(orient="records"):
        key = cell_of(row)
        cell = found.setdefault(key, CellRuns(key))
        cell.rows.append(row)
        if row["status"] == "ok" and row["run_id"] in by_run:
            steps = measured_steps_us(by_run[row["run_id"]])
            if steps:
                cell.measured.append((row, steps))
    return found


def _per_run_ci(values: list[float], *, samples: int) -> tuple[float | None, float | None, float | None]:
    """Median of one figure per run with a bootstrap CI over the runs (each run is its own repeat)."""
    estimate = stats.median_ci([[v] for v in values], samples=samples)
    return (estimate.value, estimate.low, estimate.high) if estimate else (None, None, None)


def _status_line(cell: CellRuns) -> str:
    counts: dict[str, int] = defaultdict(int)
    for row in cell.rows:
        counts[str(row["status"])] += 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# --------------------------------------------------------------------------- overhead table


def combined_verdict(test_verdict: str, ratio_low: float | None, ratio_high: float | None) -> str:
    """The Mann–Whitney verdict, kept only when the ratio CI agrees (excludes 1)."""
    disputed = ratio_low is not None and ratio_high is not None and ratio_low <= 1.0 <= ratio_high
    return "no measurable difference" if test_verdict in ("slower", "faster") and disputed else test_verdict


def time_to_target(cell: CellRuns, task_info: dict[str, Any], *, samples: int) -> dict[str, Any]:
    """Training time to the task's target (MLPerf-style time-to-train), over the cell's runs.

    Runs evaluate every ``eval_every`` steps outside the measured time (``--eval-every``). A time
    is given only when every run of the cell met the target (a median over the runs that did would
    flatter a cell that mostly misses); otherwise the text says how many did. A cell without
    periodic evaluation says so instead of showing a number.
    """
    target = task_info.get("target_metric")
    if target is None:
        return {"time_to_target": "no target declared"}
    sign = "≥" if task_info.get("higher_is_better", True) else "≤"
    metric = task_info.get("metric_name") or "metric"
    evaluated = [r for r in cell.ok_rows if _plain(r.get("evals_run")) is not None]
    if not evaluated:
        finals = cell.values("eval_metric")
        higher = task_info.get("higher_is_better", True)
        reached = sum(1 for v in finals if (v >= target if higher else v <= target))
        return {"time_to_target": f"not measured: no periodic eval (final {metric} {sign} {target:g} "
                                  f"in {reached}/{len(finals)} runs)"}
    times = [float(r["time_to_target_s"]) for r in evaluated if _plain(r.get("time_to_target_s")) is not None]
    steps = sorted({int(r["steps_to_target"]) for r in evaluated if _plain(r.get("steps_to_target")) is not None})
    every = sorted({int(r["eval_every"]) for r in evaluated if _plain(r.get("eval_every")) is not None})
    figures: dict[str, Any] = {"target_reached_runs": len(times), "target_evaluated_runs": len(evaluated)}
    at = "/".join(str(s) for s in steps)
    interval = f"(eval every {'/'.join(str(e) for e in every)})"
    if times and len(times) == len(evaluated):
        value, low, high = _per_run_ci(times, samples=samples)
        figures.update(time_to_target_s=value, time_to_target_low=low, time_to_target_high=high)
        figures["time_to_target"] = (f"{metric} {sign} {target:g} at step {at} in {len(times)}/{len(evaluated)} runs "
                                     f"{interval}")
    elif times:
        # Runs that missed the target have no time: a median over the others would flatter the cell.
        figures["time_to_target"] = (f"{metric} {sign} {target:g} reached in only {len(times)}/{len(evaluated)} runs "
                                     f"(fastest {min(times):.3g} s at step {at}) {interval}: no time given")
    else:
        figures["time_to_target"] = f"{metric} {sign} {target:g} not reached in {len(evaluated)} runs"
    return figures


def overhead_table(frame: pd.DataFrame, found: dict[Cell, CellRuns], tasks: dict[str, Any], *, samples: int) -> Table:
    rows = []
    for key, cell in found.items():
        native = found.get(key.native)
        global_batch = key.global_batch
        label = " ".join([key.adapter, key.mode, key.precision]
                         + ([f"ws{key.world_size}"] if (key.world_size or 1) > 1 else [])
                         + ([f"acc{key.grad_accum}"] if (key.grad_accum or 1) > 1 else []))
        row: dict[str, Any] = {
            "cell": key.describe(), "label": label, "task_key": key.task_key,
            "task": key.task, "options": key.options, "adapter": key.adapter, "mode": key.mode,
            "precision": key.precision, "world_size": key.world_size, "grad_accum": key.grad_accum,
            "batch_size": key.batch_size, "runs": _status_line(cell), "repeats": len(cell.groups),
        }
        median = stats.median_ci(cell.groups, samples=samples)
        if median:
            row.update(median_step_us=median.value, median_step_low=median.low, median_step_high=median.high,
                       steps_measured=median.samples)
            row.update(throughput=global_batch / (median.value / 1e6),
                       throughput_low=global_batch / (median.high / 1e6),
                       throughput_high=global_batch / (median.low / 1e6) if median.low > 0 else None)
        is_reference = key.is_reference
        if native and native.groups and cell.groups and not is_reference:
            ratio, diff = stats.compare_medians(cell.groups, native.groups, samples=samples)
            if ratio is not None:
                row.update(ratio=ratio.value, ratio_low=ratio.low, ratio_high=ratio.high)
            row.update(overhead_us=diff.value, overhead_low=diff.low, overhead_high=diff.high,
                       native_repeats=len(native.groups))
            pooled = [v for g in cell.groups for v in g]
            native_pooled = [v for g in native.groups for v in g]
            test = stats.mann_whitney(pooled, native_pooled)
            verdict = combined_verdict(test["verdict"], row.get("ratio_low"), row.get("ratio_high"))
            row.update(test_verdict=verdict, p_value=test["p_value"], alpha=test["alpha"])
        elif is_reference and cell.groups:
            row.update(ratio=1.0, ratio_low=1.0, ratio_high=1.0, test_verdict="reference")
        elif cell.groups:
            row["test_verdict"] = "no native run in this cell"
        else:
            row["test_verdict"] = "no finished run"
        for column, out in (("peak_memory_bytes", "peak_mib"), ("startup_s", "startup_s"),
                            ("library_startup_s", "library_startup_s"), ("wall_s", "wall_s")):
            values = cell.values(column)
            if column == "peak_memory_bytes":
                values = [v / 2**20 for v in values]
            value, low, high = _per_run_ci(values, samples=samples)
            row.update({out: value, f"{out}_low": low, f"{out}_high": high})
        row.update(time_to_target(cell, tasks.get(key.task, {}), samples=samples))
        rows.append(row)
    columns = [
        Column("cell", "cell", numeric=False), Column("runs", "runs", numeric=False), Column("repeats", "repeats"),
        Column("native_repeats", "native repeats"),
        Column("median_step_us", "median µs/step (95% CI)", "median_step_low", "median_step_high"),
        Column("ratio", "× native (95% CI)", "ratio_low", "ratio_high"),
        Column("overhead_us", "overhead µs/step (95% CI)", "overhead_low", "overhead_high"),
        Column("test_verdict", f"vs native (Mann–Whitney α={stats.ALPHA} and CI)", numeric=False),
        Column("p_value", "p"),
        Column("throughput", "samples/s (95% CI)", "throughput_low", "throughput_high"),
        Column("peak_mib", "peak MiB"),
        Column("startup_s", "start-up s (95% CI)", "startup_s_low", "startup_s_high"),
        Column("library_startup_s", "library start-up s (95% CI)", "library_startup_s_low", "library_startup_s_high"),
        Column("wall_s", "wall s (95% CI)", "wall_s_low", "wall_s_high"),
        Column("time_to_target_s", "time to target s (95% CI)", "time_to_target_low", "time_to_target_high"),
        Column("time_to_target", "target", numeric=False),
    ]
    note = (
        "One row per task × adapter × mode × precision × world size (× accumulation, batch). Step times are after each "
        "run's warm-up; a cell's runs (repeats and seeds, each in its own process) are pooled, and every 95% CI is a "
        f"two-level bootstrap ({samples} resamples) over runs and then steps within each run, so run-to-run variation "
        "is part of the uncertainty; `repeats` is how many runs a figure rests on (1 = within-run spread only). "
        "× native and overhead compare with the native aligned cell of the same task, precision, world size and batch. "
        "The verdict against native needs two things to say 'slower' or 'faster': the two-sided Mann–Whitney U test on "
        "the pooled steps of all runs at p < α, and a ratio CI that excludes 1. The test alone treats every step as "
        "independent and so ignores run-to-run variation (on 3 × 115 steps it rejects for differences the repeats do "
        "not support); the CI carries that variation. Otherwise the verdict is 'no measurable difference' (p shown). "
        "Start-up is launch to first optimizer step, in a fresh interpreter (what a user waits for); library "
        "start-up is what a worker forked from the suite's zygote spends from the fork to the end of its first "
        "step: the library's import and set-up, building the data and model, with torch already imported, and "
        "for deterministic specs its compiler stack, and the task's data modules (e.g. scikit-learn): the same "
        "for every adapter on a task. Wall is the whole worker (start-up, training, evaluation). "
        "Peak memory is peak RSS on CPU, `torch.cuda.max_memory_allocated` on CUDA (median over runs). "
        "Time to target is training time (the fit clock, from the adapter's fit call; the harness's periodic "
        "validation is paused out of it, start-up is not included) until the first validation that meets the "
        "task's declared target; its resolution is the validation interval (median over the runs that reached it)."
    )
    return Table("overhead", "Overhead against the native loop", columns, rows, note)


# --------------------------------------------------------------------------- scaling decomposition


def flops_per_step(row: dict[str, Any], tasks: dict[str, Any]) -> float | None:
    """FLOPs of one optimizer step on one process of a ``scaling`` run (6 × weights × samples)."""
    from tasks.scaling import flops_per_sample  # tasks import torch; the report needs it only here

    options = dict(tasks.get("scaling", {}).get("options", {}))
    for part in filter(None, str(row["options"] or "").split(",")):
        name, _, value = part.partition("=")
        options[name] = value
    try:
        width, depth = int(options["width"]), int(options["depth"])
    except (KeyError, ValueError):
        return None
    return float(flops_per_sample(width, depth) * row["batch_size"] * row["grad_accum"])


def fixed_difference(points, native_points, *, samples: int, seed: int = 0) -> tuple[float | None, float | None]:
    """95% CI of (adapter fixed term − native fixed term), resampling each adapter's points independently."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(points, dtype=float), np.asarray(native_points, dtype=float)
    differences = []
    for _ in range(samples):
        ra, rb = a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]
        if np.unique(ra[:, 0]).size < 2 or np.unique(rb[:, 0]).size < 2:
            continue
        differences.append(np.polyfit(ra[:, 0] / 1e9, ra[:, 1], 1)[1] - np.polyfit(rb[:, 0] / 1e9, rb[:, 1], 1)[1])
    if not differences:
        return None, None
    low, high = np.percentile(differences, [2.5, 97.5])
    point = float(np.polyfit(a[:, 0] / 1e9, a[:, 1], 1)[1] - np.polyfit(b[:, 0] / 1e9, b[:, 1], 1)[1])
    return float(min(low, point)), float(max(high, point))


def scaling_fits(frame: pd.DataFrame, found: dict[Cell, CellRuns], tasks: dict[str, Any], *, samples: int):
    """Per adapter × mode × precision: step time = fixed + slope · FLOPs over the scaling runs' medians."""
    points: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for key, cell in found.items():
        if key.task != "scaling" or key.world_size != 1:
            continue
        for row, group in cell.measured:
            flops = flops_per_step(row, tasks)
            if flops is not None and group:
                points[(key.adapter, key.mode, key.precision, key.device)].append((flops, float(np.median(group))))
    fits = {}
    for group_key, pts in sorted(points.items(), key=lambda item: (item[0][0] != "native", item[0])):
        pts.sort()
        fit = stats.linear_fit([p[0] / 1e9 for p in pts], [p[1] for p in pts], samples=samples)
        fits[group_key] = {"points": pts, "fit": fit}
    rows = []
    for (adapter, mode, precision, device), entry in fits.items():
        fit = entry["fit"]
        widths = sorted({round(p[0]) for p in entry["points"]})
        row = {"adapter": adapter, "mode": mode, "precision": precision, "device": device,
               "runs": len(entry["points"]), "distinct_sizes": len(widths)}
        if fit.get("fixed") is not None:
            row.update(fixed_us=fit["fixed"], fixed_low=fit["fixed_ci"][0], fixed_high=fit["fixed_ci"][1],
                       slope_us_per_gflop=fit["slope"], slope_low=fit["slope_ci"][0], slope_high=fit["slope_ci"][1])
            native = fits.get(("native", "aligned", precision, device), {})
            if native.get("fit", {}).get("fixed") is not None and adapter != "native":
                difference = fixed_difference(entry["points"], native["points"], samples=samples)
                row.update(fixed_minus_native_us=fit["fixed"] - native["fit"]["fixed"],
                           fixed_minus_native_low=difference[0], fixed_minus_native_high=difference[1])
        else:
            row["note"] = "fewer than two distinct widths: no fit"
        rows.append(row)
    columns = [
        Column("adapter", "adapter", numeric=False), Column("mode", "mode", numeric=False),
        Column("precision", "precision", numeric=False), Column("runs", "runs (points)"),
        Column("fixed_us", "fixed µs/step (95% CI)", "fixed_low", "fixed_high"),
        Column("slope_us_per_gflop", "µs per GFLOP (95% CI)", "slope_low", "slope_high"),
        Column("fixed_minus_native_us", "fixed − native fixed µs (95% CI)", "fixed_minus_native_low",
               "fixed_minus_native_high"),
        Column("note", "note", numeric=False),
    ]
    note = (
        "From the `scaling` task swept over widths: each run's median step time (after warm-up) is one point, "
        "x = FLOPs per optimizer step (`tasks.scaling.flops_per_sample` × batch), and a least-squares line "
        f"step time = fixed + slope · GFLOPs is fitted per adapter; CIs bootstrap the points ({samples} resamples). "
        "The fixed term is the per-step cost that does not grow with the model: the library's own per-step work. "
        "A negative fixed term with a CI spanning 0 means no fixed cost is measurable at this noise level."
    )
    return Table("scaling", "Overhead decomposition (scaling sweep)", columns, rows, note), fits


# --------------------------------------------------------------------------- defaults vs aligned


def defaults_table(found: dict[Cell, CellRuns], *, samples: int) -> Table:
    rows = []
    for key, cell in found.items():
        if key.mode != "defaults":
            continue
        aligned = found.get(key._replace(mode="aligned"))
        row = {"cell": f"{key.adapter}: {key.describe(with_adapter=False)}", "adapter": key.adapter,
               "repeats_defaults": len(cell.groups), "repeats_aligned": len(aligned.groups) if aligned else 0}
        if aligned and aligned.groups and cell.groups:
            ratio, diff = stats.compare_medians(cell.groups, aligned.groups, samples=samples)
            row.update(step_cost_us=diff.value, step_cost_low=diff.low, step_cost_high=diff.high)
            if ratio is not None:
                row.update(ratio=ratio.value, ratio_low=ratio.low, ratio_high=ratio.high)
            for column in ("wall_s", "startup_s", "fit_s"):
                a, d = aligned.values(column), cell.values(column)
                if a and d:
                    row[f"{column}_cost"] = float(np.median(d) - np.median(a))
        else:
            row["note"] = "needs finished runs in both modes"
        rows.append(row)
    columns = [
        Column("cell", "cell", numeric=False), Column("repeats_defaults", "repeats (defaults)"),
        Column("repeats_aligned", "repeats (aligned)"),
        Column("step_cost_us", "per-step cost µs (95% CI)", "step_cost_low", "step_cost_high"),
        Column("ratio", "defaults ÷ aligned (95% CI)", "ratio_low", "ratio_high"),
        Column("wall_s_cost", "per-run cost s (wall)"), Column("startup_s_cost", "start-up cost s"),
        Column("fit_s_cost", "training-loop cost s"), Column("note", "note", numeric=False),
    ]
    note = ("What a library's defaults (its progress bar, logging, validation, idiomatic optimizer and data order) "
            "cost over the same library configured to do the native loop's math: per step = median step time "
            "difference (two-level bootstrap CI); per run = difference of the median whole-run wall time, start-up "
            "time and training-loop time. Defaults runs are not parity-comparable by design.")
    return Table("defaults", "Defaults vs aligned", columns, rows, note)


# --------------------------------------------------------------------------- parity

PARITY_FIELDS = (
    "steps_compared", "first_differing_step", "first_step_beyond_tolerance", "loss_max_abs_diff", "tensor",
    "weight_max_abs_diff", "weight_max_rel_diff",
)


def parity_of(row: dict[str, Any]) -> Parity | None:
    """A run's verdicts from its structured ``parity_json`` tag (None for a run without one)."""
    return Parity.from_json(_plain(row.get("parity_json")))


def verdict_fields(verdict: str | None, comparison: Verdict | None) -> dict[str, Any]:
    """The figures a parity row shows for one comparison: what its verdict needs, nothing more."""
    out: dict[str, Any] = {"verdict": verdict}
    if comparison is None:
        return out
    if verdict == "not-comparable":
        out["reason"] = comparison.reason
    elif verdict == "bitwise":
        out["steps_compared"] = comparison.steps_compared
    else:
        out.update({name: getattr(comparison, name) for name in PARITY_FIELDS})
    return out


def primary_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The headline verdict of a run (its ``parity`` tag) with the figures of that comparison."""
    parity = parity_of(row)
    return verdict_fields(_plain(row["parity"]), parity.primary if parity else None)


def run_name(row: dict[str, Any]) -> str:
    extra = f" s{row['seed']}" + (f" r{row['repeat']}" if _plain(row["repeat"]) else "")
    return cell_of(row).describe() + extra


AGAINST = {DECLARED: "native, same configuration", SINGLE_PROCESS: "native, one process, same global batch",
           REPEAT: "its first repeat"}
"""How each partner role is named in the tables."""


def comparisons_of(row: dict[str, Any]) -> list[Verdict]:
    """Every comparison a run carries; a run logged before structured verdicts has its headline only."""
    parity = parity_of(row)
    if parity is not None:
        return list(parity.comparisons)
    verdict = _plain(row.get("parity"))
    return [Verdict(verdict=verdict, reason="details not stored with this run")] if verdict in VERDICTS else []


def parity_table(frame: pd.DataFrame) -> Table:
    rows = []
    for row in frame.to_dict(orient="records"):
        for comparison in comparisons_of(row):
            rows.append({
                "run": run_name(row), "spec_id": row["spec_id"], "run_id": row["run_id"], "status": row["status"],
                "adapter": row["adapter"], "mode": row["mode"], "precision": row["precision"],
                "world_size": _plain(row["world_size"]), "grad_accum": _plain(row["grad_accum"]),
                "task_key": cell_of(row).task_key, "against": AGAINST.get(comparison.against, comparison.against),
                "role": comparison.against, "reference": comparison.reference, "expected": comparison.expected,
                "finding": comparison.finding, **verdict_fields(comparison.verdict, comparison),
            })
    columns = [
        Column("run", "run", numeric=False), Column("against", "against", numeric=False),
        Column("verdict", "verdict", numeric=False), Column("expected", "declared", numeric=False),
        Column("finding", "finding", numeric=False),
        Column("steps_compared", "steps"), Column("first_differing_step", "first differing step"),
        Column("first_step_beyond_tolerance", "first step beyond tolerance"),
        Column("tensor", "tensor with largest difference", numeric=False),
        Column("loss_max_abs_diff", "max |Δloss|"), Column("weight_max_abs_diff", "max |Δweight|"),
        Column("weight_max_rel_diff", "rel |Δweight|"), Column("reason", "reason", numeric=False),
        Column("spec_id", "spec id", numeric=False),
    ]
    note = ("Each run against native aligned runs of the same task, options, seed, steps, learning rate and precision "
            "(and the same CPU thread layout and kernels): the one with the same world size, accumulation and "
            "batch (the partner the adapter's declaration is about; a native repeat is compared with its first "
            "repeat), and, for DDP and accumulation, the one-process run at the same global batch (not comparable "
            "for a task whose math depends on the batch). `bitwise`: every step loss and every final weight equal; "
            "`close`: within the task's declared tolerance for that precision; `diverged`: beyond it; "
            "`not-comparable`: reason given. *declared* is what the adapter declares for that comparison; a "
            "*finding* is a measured verdict worse than declared. The references themselves are not listed.")
    return Table("parity", "Parity against the native loop", columns, rows, note)


# --------------------------------------------------------------------------- reproducibility


def _losses(record: RunRecord | None) -> list[float]:
    return [v for _, v in record.histories.get("loss", [])] if record else []


def repeats_table(frame: pd.DataFrame, records: Sequence[RunRecord]) -> Table:
    by_run = {r.run_id: r for r in records}
    groups: dict[tuple[Cell, Any], list[dict[str, Any]]] = defaultdict(list)
    for row in frame.to_dict(orient="records"):
        if row["status"] == "ok":
            groups[(cell_of(row), _plain(row["seed"]))].append(row)
    rows = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        digests = {m["weights_digest"] for m in members}
        trajectories = [_losses(by_run.get(m["run_id"])) for m in members]
        first = trajectories[0]
        same_losses = all(t == first for t in trajectories[1:])
        max_diff = max((abs(a - b) for t in trajectories[1:] for a, b in zip(first, t)), default=0.0)
        rows.append({
            "cell": key[0].describe() + f" s{key[1]}", "repeats": len(members),
            "bitwise": "yes" if same_losses and len(digests) == 1 else "no",
            "distinct_weight_digests": len(digests), "loss_max_abs_diff": max_diff,
        })
    columns = [Column("cell", "cell (same seed)", numeric=False), Column("repeats", "repeats"),
               Column("bitwise", "bitwise identical", numeric=False),
               Column("distinct_weight_digests", "distinct final-weight digests"),
               Column("loss_max_abs_diff", "max |Δloss| vs first repeat")]
    note = ("Runs of the same spec repeated in separate processes (same seed): identical if every step loss and the "
            "final weights' SHA-256 agree.")
    return Table("repeats", "Reproducibility: repeated runs", columns, rows, note)


def precision_table(frame: pd.DataFrame, tasks: dict[str, Any]) -> Table:
    rows_by_key: dict[tuple, dict[str, Any]] = {}
    for row in frame.to_dict(orient="records"):
        if row["status"] == "ok":
            key = (cell_of(row)._replace(precision=None), _plain(row["seed"]), _plain(row["repeat"]))
            rows_by_key[(*key, row["precision"])] = row
    rows = []
    for key, low in rows_by_key.items():
        precision = key[-1]
        if precision not in LOW_PRECISIONS:
            continue
        full = rows_by_key.get((*key[:-1], "fp32"))
        if full is None or _plain(full["final_loss"]) is None or _plain(low["final_loss"]) is None:
            continue
        diff = float(low["final_loss"]) - float(full["final_loss"])
        relative = abs(diff) / abs(float(full["final_loss"])) if full["final_loss"] else None
        drift = tasks.get(low["task"], {}).get("precision_drift", {}).get(precision)
        rows.append({
            "run": run_name(low).replace(f" {precision}", ""), "precision": precision,
            "final_loss_fp32": float(full["final_loss"]), "final_loss_low": float(low["final_loss"]),
            "difference": diff, "relative": relative, "declared_drift": drift,
            "within_declared": None if drift is None or relative is None else ("yes" if relative <= drift else "no"),
        })
    columns = [Column("run", "run", numeric=False), Column("precision", "precision", numeric=False),
               Column("final_loss_fp32", "final loss fp32"), Column("final_loss_low", "final loss low precision"),
               Column("difference", "difference"), Column("relative", "relative"),
               Column("declared_drift", "task's declared drift"),
               Column("within_declared", "within declared", numeric=False)]
    note = ("Final training loss of each mixed-precision run against the fp32 run of the same adapter, mode, seed "
            "and repeat; the expected relative drift is declared per task and precision (`Task.precision_drift`).")
    return Table("precision", "Reproducibility: mixed precision vs fp32", columns, rows, note)


def distributed_table(frame: pd.DataFrame) -> Table:
    singles = {}
    for row in frame.to_dict(orient="records"):
        if row["status"] == "ok" and row["adapter"] == "native" and row["mode"] == "aligned" \
                and row["world_size"] == 1 and row["grad_accum"] == 1 and not _plain(row["repeat"]):
            singles[(row["task"], row["options"], row["precision"], _plain(row["seed"]),
                     row["batch_size"], row["steps"])] = row
    rows = []
    for row in frame.to_dict(orient="records"):
        if not ((_plain(row["world_size"]) or 1) > 1 or (_plain(row["grad_accum"]) or 1) > 1):
            continue
        global_batch = row["batch_size"] * row["world_size"] * row["grad_accum"]
        single = singles.get((row["task"], row["options"], row["precision"], _plain(row["seed"]), global_batch,
                              row["steps"]))
        found = {v.against: v for v in comparisons_of(row)}
        declared = found.get(DECLARED) or found.get(REPEAT)
        one_process = found.get(SINGLE_PROCESS)
        entry = {"run": run_name(row), "status": row["status"], "adapter": row["adapter"], "mode": row["mode"],
                 "kind": "DDP" if row["world_size"] > 1 else "accumulation", "global_batch": global_batch,
                 "verdict_same": declared.verdict if declared else "no partner",
                 "verdict": one_process.verdict if one_process else "no partner",
                 "first_differing_step": one_process.first_differing_step if one_process else None,
                 "loss_max_abs_diff": one_process.loss_max_abs_diff if one_process else None,
                 "reason": "; ".join(filter(None, [(declared.reason if declared and declared.verdict ==
                                                    "not-comparable" else ""),
                                                   (one_process.reason if one_process and one_process.verdict ==
                                                    "not-comparable" else "")])) or None,
                 "coverage": _plain(row.get("coverage"))}
        if single is not None and row["status"] == "ok" and _plain(row["final_loss"]) is not None:
            entry["final_loss_difference"] = float(row["final_loss"]) - float(single["final_loss"])
        rows.append(entry)
    columns = [Column("run", "run", numeric=False), Column("kind", "kind", numeric=False),
               Column("status", "status", numeric=False), Column("global_batch", "global batch"),
               Column("verdict_same", "vs native, same configuration", numeric=False),
               Column("verdict", "vs native, one process", numeric=False),
               Column("first_differing_step", "first differing step (one process)"),
               Column("loss_max_abs_diff", "max |Δloss| (one process)"),
               Column("final_loss_difference", "final loss − one-process native"),
               Column("coverage", "sample coverage", numeric=False),
               Column("reason", "reason", numeric=False)]
    note = ("DDP (world size > 1) and gradient-accumulation runs against two native partners: the run with the same "
            "configuration (what the adapter declares, so an adapter's own deviation shows even where it is below "
            "the tolerance) and the one-process run with the same global batch (equivalent math gives `bitwise` or "
            "`close`, the all-reduce and thread layout change the float order; not comparable for a task that is "
            "not batch-invariant). Sample coverage says which samples each epoch trained on (a fact about the run, "
            "not part of the verdict).")
    return Table("distributed", "Reproducibility: DDP and gradient accumulation", columns, rows, note)


# --------------------------------------------------------------------------- everything


INFERENCE_LIBRARIES = {"fastai": "fastai", "keras": "keras", "hf": "transformers (Trainer)", "flash": "lightning-flash"}
"""Adapter (without a version) → the library name its rows carry in ``reports.inference``."""


def inference_table(frame: pd.DataFrame) -> Table:
    """What each compared high-level API infers from the data and what its user states by hand."""
    present = {str(a).partition("@")[0] for a in frame["adapter"].dropna()} if "adapter" in frame else set()
    libraries = {INFERENCE_LIBRARIES[a] for a in present if a in INFERENCE_LIBRARIES}
    rows = [{**row, "stated_by_hand": ", ".join(row["stated_by_hand"]), "library": f"{row['library']} {row['version']}"}
            for row in rows_of() if row["library"] in libraries]
    columns = [
        Column("library", "library (source read at version)", numeric=False, markup=True),
        Column("entry_point", "entry point", numeric=False, markup=True),
        Column("num_classes", "number of classes", numeric=False, markup=True),
        Column("input_shape", "input shape", numeric=False, markup=True),
        Column("stated_by_hand", "the user states by hand", numeric=False, markup=True),
        Column("evidence", "where the library decides it", numeric=False, markup=True),
    ]
    note = ("For the high-level APIs compared in this report: what the API infers from the data and what its "
            "user must state, read from each library's source at the version named (adapters/inference.py). "
            "bakeoff's aligned runs state everything by hand (the task's model), so this is about the APIs as "
            "their users meet them, not about the figures above.")
    return Table("inference", "What the high-level APIs infer from the data", columns, rows, note)


PAIRED_COLUMNS = [
    Column("cell", "cell", numeric=False),
    Column("overhead_us", "overhead µs/step (wall)", "overhead_low", "overhead_high"),
    Column("clock", "verdict clock", numeric=False),
    Column("instructions_delta", "Δ instructions/step", "instructions_delta_low", "instructions_delta_high"),
    Column("instructions_estimate_us", "≈ µs at native's rate"),
    Column("native_us", "native µs/step"),
    Column("thread_us", "thread Δ µs/step", "thread_low", "thread_high"),
    Column("ratio", "÷ native", "ratio_low", "ratio_high"),
    Column("instructions_ratio", "instructions ÷ native"),
    Column("instructions_agree_pct", "instruction runs agree to %"),
    Column("syncs_per_step", "host syncs/step"),
    Column("placed_share", "profile places"),
    Column("rounds", "rounds"),
    Column("status", "status", numeric=False),
]
LAYOUTS_COLUMN = Column("instructions_layouts_pct", "instructions across heap layouts spread %")
SYNC_COLUMNS = [
    Column("cell", "cell", numeric=False),
    Column("syncs_per_step", "syncs/step"),
    Column("native_syncs_per_step", "native syncs/step"),
    Column("by_kind", "by kind", numeric=False),
    Column("top_site", "most frequent call site", numeric=False),
]


def cost_tables(cost_records: Sequence[dict[str, Any]]) -> dict[str, Table]:
    """The ``paired`` and ``syncs`` tables from the suite's paired cost records (``bakeoff cost``)."""
    from reports import cost as cost_rows

    rows = cost_rows.paired_table_rows(cost_records)
    columns = PAIRED_COLUMNS
    if any("instructions_layouts_pct" in row for row in rows):  # only passes run over several heap layouts
        at = next(i for i, c in enumerate(columns) if c.key == "instructions_agree_pct") + 1
        columns = [*columns[:at], LAYOUTS_COLUMN, *columns[at:]]
    paired = Table(
        "paired", "Paired in-process cost", columns, rows,
        note=("Each cell ran in one process that alternated fresh native and adapter fits round after round, in a "
              "random order balanced over the rounds; a round's figure per arm is its mean µs per steady-state step, "
              "the cell's is the median of the per-round differences (adapter − native) with a bootstrap 95% CI over "
              "rounds. The verdict clock is wall time where its CI half-width meets max(5 µs, 2% of the native step), "
              "else the instruction count (callgrind, main thread, two runs, CI over rounds; \"runs agree to\" is "
              "the worse arm's (max − min) / mean of the runs' per-step counts) where the cell has one: the sign "
              "and size of the difference in instructions then decide, and its conversion to µs at "
              "native's µs per instruction is an estimate without a CI (an adapter's instructions need not cost "
              "what native's do). The µs figure is always the wall clock's; the main-thread CPU clock is beside it. "
              "Host syncs are the reads that would "
              "stall a GPU, counted per step on the CPU; \"profile places\" is the share of the profiled difference "
              "the profile names a call site for."),
    )
    if columns is not PAIRED_COLUMNS:
        paired.note += " \"Across heap layouts spread\" is the same spread over runs given " + cost_rows.LAYOUTS_NOTE
    syncs = Table(
        "syncs", "Host syncs", SYNC_COLUMNS, cost_rows.syncs_table_rows(cost_records),
        note=("Reads of device-resident tensors per optimizer step (`.item()`, `bool(tensor)`, `.cpu()`, `.tolist()`, "
              "printing, boolean masks, …), counted by an interposer in the paired cost process; on a GPU each would "
              "wait for the device. The native loop and the harness probe make none."),
    )
    return {"paired": paired, "syncs": syncs}


def coverage_table(frame: pd.DataFrame) -> Table:
    """Per adapter, mode and process layout: which samples each epoch trained on (counted per run)."""
    counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    for row in frame.to_dict(orient="records"):
        phrase = row.get("coverage")
        if row["status"] != "ok" or not isinstance(phrase, str):
            continue
        ranks = _plain(row["world_size"]) or 1
        layout = f"{row['mode']}, {ranks} ranks" if ranks > 1 else f"{row['mode']}, one process"
        counts[(row["adapter"], layout, row["task"], phrase)] += 1
        totals[(row["adapter"], layout, row["task"])] += 1
    rows = [{"adapter": adapter, "layout": layout, "task": task, "coverage": phrase,
             "runs": f"{n} of {totals[(adapter, layout, task)]}"}
            for (adapter, layout, task, phrase), n in sorted(counts.items(), key=lambda i: (i[0][0] != "native", i[0]))]
    columns = [Column("adapter", "adapter", numeric=False), Column("layout", "mode and ranks", numeric=False),
               Column("task", "task", numeric=False), Column("coverage", "per epoch", numeric=False),
               Column("runs", "runs", numeric=False)]
    note = ("Which samples each epoch trained on, recorded outside the timed loop: exactly once, duplicates (and "
            "whether they cross ranks), samples dropped, short batches, and whether the order follows the spec seed. "
            "Aligned runs share the harness sampler, which drops the last partial batch; defaults runs use the "
            "library's own loader. Coverage is a fact about a run; it does not enter any parity verdict.")
    return Table("coverage", "Sample coverage", columns, rows, note)


def analyse(frame: pd.DataFrame, records: Sequence[RunRecord], tasks: dict[str, Any], *, samples: int):
    """Every derived table (name → Table) and the scaling fits for the plot."""
    found = cells(frame, records)
    scaling, fits = scaling_fits(frame, found, tasks, samples=samples)
    tables = [
        overhead_table(frame, found, tasks, samples=samples),
        scaling,
        defaults_table(found, samples=samples),
        parity_table(frame),
        repeats_table(frame, records),
        precision_table(frame, tasks),
        distributed_table(frame),
        coverage_table(frame),
        inference_table(frame),
    ]
    return {t.name: t for t in tables}, fits, found
