"""Report figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from reports.tables import run_label, task_key

DPI = 110


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def loss_curves(frame: pd.DataFrame, losses: dict[str, list[tuple[int, float]]], task: str) -> bytes | None:
    """Per-step training loss of every run of one task, adapters overlaid."""
    rows = [row for _, row in frame.iterrows() if task_key(row) == task and losses.get(row["run_id"])]
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    for row in rows:
        steps, values = zip(*losses[row["run_id"]])
        style = "-" if row["adapter"] == "native" else "--"
        axes.plot(steps, values, style, linewidth=1.2, label=run_label(row))
    axes.set_title(f"{task}: training loss per optimizer step")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    return _png(figure)


def step_time_distributions(
    frame: pd.DataFrame, step_times: dict[str, list[tuple[int, float]]], task: str, warmup: dict[str, int]
) -> bytes | None:
    """Box plots of step time (µs, after each run's warm-up steps) for every run of one task."""
    rows = [row for _, row in frame.iterrows() if task_key(row) == task and step_times.get(row["run_id"])]
    series, labels = [], []
    for row in rows:
        values = [v for step, v in step_times[row["run_id"]] if step >= warmup.get(row["run_id"], 0)]
        if values:
            series.append(values)
            labels.append(run_label(row))
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(max(5.0, 0.9 * len(series) + 2), 4.2))
    axes.boxplot(series, showfliers=True, flierprops={"markersize": 2})
    axes.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("step time (µs, log scale)")
    axes.set_title(f"{task}: step time after warm-up")
    axes.grid(alpha=0.3, axis="y")
    return _png(figure)
