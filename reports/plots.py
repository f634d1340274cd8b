"""Report figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

from reports.tables import run_label, task_key

DPI = 72
PALETTE_COLOURS = 32
"""Plots are line art: a 32-colour palette PNG is a quarter of the size and looks the same, which keeps a
suite's self-contained HTML small enough to open anywhere."""
ADAPTER_COLOURS = {"native": "#000000", "lightning": "#1f77b4", "fastai": "#ff7f0e", "keras": "#2ca02c",
                   "hf": "#d62728", "flash": "#9467bd"}
"""One colour per adapter in every plot; other adapters (versions, plugins) take the rest in turn."""
_MORE = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MODE_STYLES = {"aligned": "-", "defaults": "--"}


def adapter_colour(adapter: str, seen: dict[str, str]) -> str:
    if adapter in ADAPTER_COLOURS:
        return ADAPTER_COLOURS[adapter]
    if adapter not in seen:
        seen[adapter] = _MORE[len(seen) % len(_MORE)]
    return seen[adapter]


def _fixed_palette():
    """The colours the line plots draw with, their half tints (anti-aliased edges) and a few greys."""
    from PIL import Image

    def rgb(hex_colour: str) -> tuple[int, int, int]:
        return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))

    base = [rgb(c) for c in (*ADAPTER_COLOURS.values(), *_MORE)]
    tints = [tuple((v + 255) // 2 for v in colour) for colour in base[1:]]
    greys = [(255, 255, 255), (235, 235, 235), (200, 200, 200), (150, 150, 150), (90, 90, 90)]
    colours = (greys + base + tints)[:256]
    image = Image.new("P", (1, 1))
    image.putpalette([v for colour in colours for v in colour] + [0] * (768 - 3 * len(colours)))
    return image


def png_bytes(figure, *, palette: str = "fixed") -> bytes:
    """The figure as a palette PNG: ``fixed`` maps onto the plotting colours (thin lines keep their colour),
    ``adaptive`` picks the image's own 32 (filled areas in many colours, the attribution bars)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB")
    if palette == "fixed":
        image = image.quantize(palette=_fixed_palette(), dither=Image.Dither.NONE)
    else:
        image = image.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _legend_by_adapter_and_mode(axes, rows, seen: dict[str, str]) -> None:
    """A compact legend: a colour per adapter and a line style per mode (not one entry per run)."""
    from matplotlib.lines import Line2D

    adapters = list(dict.fromkeys(str(r["adapter"]) for r in rows))
    modes = list(dict.fromkeys(str(r["mode"]) for r in rows))
    handles = [Line2D([], [], color=adapter_colour(a, seen), linewidth=2, label=a) for a in adapters]
    handles += [Line2D([], [], color="#5a5a5a", linestyle=MODE_STYLES.get(m, ":"), label=m) for m in modes]
    axes.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def loss_curves(frame: pd.DataFrame, losses: dict[str, list[tuple[int, float]]], task: str) -> bytes | None:
    """Per-step training loss of every run of one task, adapters overlaid."""
    rows = [row for _, row in frame.iterrows() if task_key(row) == task and losses.get(row["run_id"])]
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    seen: dict[str, str] = {}
    for row in rows:  # native drawn on top: where an adapter's curve is bitwise equal, native's covers it
        steps, values = zip(*losses[row["run_id"]])
        axes.plot(steps, values, MODE_STYLES.get(row["mode"], ":"), color=adapter_colour(str(row["adapter"]), seen),
                  linewidth=1.0, zorder=3 if row["adapter"] == "native" else 2)
    axes.set_title(f"{task}: training loss per optimizer step ({len(rows)} runs)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    _legend_by_adapter_and_mode(axes, rows, seen)
    return png_bytes(figure)


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
    # Whiskers at 1.5 IQR; the points beyond them are left out of the picture (a suite has thousands),
    # the table's CIs and steps.csv keep every step.
    axes.boxplot(series, showfliers=False)
    axes.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("step time (µs, log scale)")
    axes.set_title(f"{task}: step time after warm-up")
    axes.grid(alpha=0.3, axis="y")
    return png_bytes(figure)


def target_curves(
    frame: pd.DataFrame,
    valid: dict[str, list[tuple[int, float]]],
    step_times: dict[str, list[tuple[int, float]]],
    task: str,
    target: float,
    metric: str,
) -> bytes | None:
    """Validation metric against training time (the fit clock, validation paused out), target drawn in."""
    rows = [row for _, row in frame.iterrows() if task_key(row) == task and valid.get(row["run_id"])]
    if not rows:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    seen: dict[str, str] = {}
    for row in rows:
        durations = dict(step_times.get(row["run_id"], []))
        clock, elapsed = {}, 0.0
        for step in sorted(durations):
            elapsed += durations[step]
            clock[step + 1] = elapsed / 1e6  # seconds after `step + 1` optimizer steps
        points = [(clock[done], value) for done, value in valid[row["run_id"]] if done in clock]
        if not points:
            continue
        xs, ys = zip(*points)
        axes.plot(xs, ys, MODE_STYLES.get(row["mode"], ":"), color=adapter_colour(str(row["adapter"]), seen),
                  linewidth=1.0)
    axes.axhline(target, color="#5a5a5a", linewidth=0.8, linestyle=":")
    axes.set_title(f"{task}: validation {metric} against training time (dotted: target {target:g})")
    axes.set_xlabel("training time (s, fit clock; validation excluded)")
    axes.set_ylabel(f"validation {metric}")
    axes.grid(alpha=0.3)
    _legend_by_adapter_and_mode(axes, rows, seen)
    return png_bytes(figure)


def overhead_bars(rows: list[dict], task: str) -> bytes | None:
    """Step time ÷ native per cell of one task, with the 95% CI as error bars (1 = native)."""
    rows = [r for r in rows if r.get("task_key") == task and r.get("ratio") is not None]
    if not rows:
        return None
    labels = [r["label"] for r in rows]
    values = [r["ratio"] for r in rows]
    low = [max(0.0, r["ratio"] - r["ratio_low"]) for r in rows]
    high = [max(0.0, r["ratio_high"] - r["ratio"]) for r in rows]
    colors = ["#888888" if r["adapter"] == "native" else "#3b75af" for r in rows]
    figure, axes = plt.subplots(figsize=(7.5, max(2.2, 0.32 * len(rows) + 1.2)))
    positions = list(range(len(rows)))[::-1]
    axes.barh(positions, values, xerr=[low, high], color=colors, capsize=3, error_kw={"linewidth": 1})
    axes.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
    axes.set_yticks(positions, labels, fontsize=7)
    axes.set_xlabel("median step time ÷ native aligned (1 = native; bars: 95% CI over repeats and steps)")
    axes.set_title(f"{task}: per-step overhead against the native loop")
    axes.grid(alpha=0.3, axis="x")
    return png_bytes(figure)


def scaling_fit(fits: dict) -> bytes | None:
    """Per-run median step time against GFLOPs per step, with each adapter's fitted line."""
    if not fits:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.6))
    for index, ((adapter, mode, precision, _device), entry) in enumerate(fits.items()):
        color = f"C{index % 10}"
        xs = [p[0] / 1e9 for p in entry["points"]]
        ys = [p[1] for p in entry["points"]]
        label = f"{adapter} {mode} {precision}"
        fit = entry["fit"]
        if fit.get("fixed") is not None:
            label += f": {fit['fixed']:.0f} µs + {fit['slope']:.0f} µs/GFLOP"
            span = [0.0, max(xs)]
            axes.plot(span, [fit["fixed"] + fit["slope"] * x for x in span], "-", color=color, linewidth=1)
        axes.plot(xs, ys, "o", color=color, markersize=3.5, label=label)
    axes.set_xlabel("GFLOPs per optimizer step (forward + backward)")
    axes.set_ylabel("median step time per run (µs)")
    axes.set_title("scaling: step time = fixed per-step overhead + slope · compute")
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return png_bytes(figure)
