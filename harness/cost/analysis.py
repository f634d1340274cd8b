"""Torch-free statistics of the cost measurements: paired CIs over rounds, attribution shares.

Every figure is a statistic over *rounds*: in a round both arms (the native loop and the
adapter) ran once each, back to back in one process, in a random order. A round is the unit of
replication because consecutive fits share the machine's state of the moment (another process
running, the CPU's frequency, the caches); steps within one fit are not independent of each
other. The per-round paired difference ``adapter − native`` cancels whatever hit both arms.

Statistic: the median over rounds, with a percentile bootstrap CI over rounds. With the order
randomised, the two arms are exchangeable, so a round's difference minus the true difference is
symmetrically distributed and its median estimates the true difference; the median ignores a
round that another process spoiled, which a mean would not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.durations import after_warmup, step_durations_ns

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 4000
MIN_ROUNDS = 6


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap CI over ``rounds`` replicates."""

    value: float
    low: float
    high: float
    rounds: int
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def excludes_zero(self) -> bool:
        return not self.contains(0.0)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, float | int]) -> Interval:
        return cls(**{key: data[key] for key in ("value", "low", "high", "rounds", "confidence")})


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def bootstrap(
    values: Sequence[float],
    *,
    statistic: Callable[..., np.ndarray] = np.median,
    confidence: float = CONFIDENCE,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Interval | None:
    """``statistic`` of ``values`` with a percentile bootstrap CI (resampling the values).

    ``statistic`` is a numpy reduction taking ``axis``. The interval is widened to contain the
    point estimate (a median's percentile interval can miss it on tied or tiny data). None when
    there is nothing finite to summarise.
    """
    data = _finite(values)
    if data.size == 0:
        return None
    value = float(statistic(data))
    if data.size == 1:
        return Interval(value, value, value, 1, confidence)
    rng = np.random.default_rng(seed)
    draws = statistic(data[rng.integers(0, data.size, (samples, data.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(value, float(min(low, value)), float(max(high, value)), int(data.size), confidence)


def paired(
    native: Sequence[float],
    adapter: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, Interval | list[float] | None]:
    """Per-round paired difference (adapter − native) and ratio (adapter / native), with CIs.

    ``native[i]`` and ``adapter[i]`` are the two arms' figures of round ``i`` (e.g. mean µs per
    steady-state step). Rounds where either arm is missing are dropped.
    """
    if len(native) != len(adapter):
        raise ValueError(f"paired rounds differ in number: {len(native)} native, {len(adapter)} adapter")
    pairs = [
        (n, a)
        for n, a in zip(native, adapter, strict=True)
        if n is not None and a is not None and math.isfinite(n) and math.isfinite(a)
    ]
    differences = [a - n for n, a in pairs]
    ratios = [a / n for n, a in pairs if n > 0]
    return {
        "difference": bootstrap(differences, confidence=confidence, seed=seed),
        "ratio": bootstrap(ratios, confidence=confidence, seed=seed + 1),
        "native": bootstrap([n for n, _ in pairs], confidence=confidence, seed=seed + 2),
        "adapter": bootstrap([a for _, a in pairs], confidence=confidence, seed=seed + 3),
        "differences": differences,
        "ratios": ratios,
    }


def arm_figures(step_end_ns: Sequence[int], thread_end_ns: Sequence[int], warmup: int) -> dict[str, float | int]:
    """One arm of one round: mean and median µs per steady-state step, by wall and by thread CPU time.

    The mean is the figure that counts (``arm["wall_mean_us"]``): it is what throughput sees, and it
    keeps work a library does every N steps (logging, an epoch boundary), which a median drops.
    The median is kept beside it. Both clocks' marks are taken at the same step ends, from fit start.
    """
    wall = after_warmup(step_durations_ns(step_end_ns), warmup)
    thread = after_warmup(step_durations_ns(thread_end_ns), warmup)
    if not wall or len(wall) != len(thread):
        raise ValueError(f"no steady-state steps to summarise ({len(step_end_ns)} steps, warm-up {warmup})")
    return {
        "steps": len(wall),
        "wall_mean_us": float(np.mean(wall)) / 1e3,
        "wall_median_us": float(np.median(wall)) / 1e3,
        "thread_mean_us": float(np.mean(thread)) / 1e3,
        "thread_median_us": float(np.median(thread)) / 1e3,
    }


def balanced_orders(rounds: int, seed: int) -> list[tuple[str, str]]:
    """The arm order of every round: random, with each order used in half the rounds (±1).

    Plain coin flips could put native first in 8 rounds of 10, and any first-vs-second effect
    (warm caches, a library's lazy set-up) would then lean on one arm; balancing keeps it even.
    """
    rng = np.random.default_rng(seed)
    first = ["native", "adapter"] * (rounds // 2) + ([str(rng.choice(["native", "adapter"]))] if rounds % 2 else [])
    rng.shuffle(first)
    return [("native", "adapter") if f == "native" else ("adapter", "native") for f in first]


# --------------------------------------------------------------------------- attribution


@dataclass(frozen=True)
class CallSite:
    """One function's own (exclusive) time per step in both arms of a profile."""

    site: str
    """``path/inside/package.py:line(function)`` or a C function's name; no machine path."""
    group: str
    """Where it lives, coarser: the package folder (``lightning/pytorch/loops``) or ``C functions``."""
    native_us: float
    adapter_us: float

    @property
    def extra_us(self) -> float:
        return self.adapter_us - self.native_us


def attribute(
    native_sites: Mapping[str, tuple[str, float]],
    adapter_sites: Mapping[str, tuple[str, float]],
    *,
    native_total_us: float,
    adapter_total_us: float,
    paired_total_us: float | None,
    top: int = 12,
) -> dict:
    """Where the adapter's extra time per step goes, from a deterministic profile of both arms.

    ``*_sites`` map a call site to ``(group, own µs per step)``; ``*_total_us`` are the profiled
    arms' wall time per step (the same steps). The profiled difference ``adapter − native`` splits
    exactly into: the top call sites by extra own time, the other call sites the adapter spends
    more in, the call sites where it spends less (mostly the native loop's own frame, which the
    library's loop replaces: a negative share), and what the profile recorded in no function
    (*unplaced*: the profiler's own overhead not charged to a call, frames entered before
    profiling began, other threads). Shares are fractions of the profiled difference; because
    profiling inflates Python calls far more than compiled work, each share is then applied to
    the *unprofiled* paired total (``paired_total_us``) rather than taken as µs.
    """
    names = sorted(set(native_sites) | set(adapter_sites))
    sites = [
        CallSite(
            site=name,
            group=(adapter_sites.get(name) or native_sites.get(name))[0],
            native_us=native_sites.get(name, ("", 0.0))[1],
            adapter_us=adapter_sites.get(name, ("", 0.0))[1],
        )
        for name in names
    ]
    profiled = adapter_total_us - native_total_us
    extra = sorted((s for s in sites if s.extra_us > 0), key=lambda s: -s.extra_us)
    fewer = [s for s in sites if s.extra_us < 0]
    named = sum(s.extra_us for s in sites)
    unplaced = profiled - named

    def share(us: float) -> float | None:
        return us / profiled if profiled > 0 else None

    def scaled(us: float) -> float | None:
        fraction = share(us)
        return fraction * paired_total_us if fraction is not None and paired_total_us is not None else None

    def entry(label: str, group: str, us: float, **more) -> dict:
        return {"site": label, "group": group, "profiled_us": us, "share": share(us), "scaled_us": scaled(us), **more}

    top_sites = [
        entry(s.site, s.group, s.extra_us, native_us=s.native_us, adapter_us=s.adapter_us) for s in extra[:top]
    ]
    rest = extra[top:]
    groups: dict[str, float] = {}
    for s in sites:
        groups[s.group] = groups.get(s.group, 0.0) + s.extra_us
    placed = share(named)
    return {
        "profiled_native_us": native_total_us,
        "profiled_adapter_us": adapter_total_us,
        "profiled_difference_us": profiled,
        "paired_difference_us": paired_total_us,
        "inflation": profiled / paired_total_us if paired_total_us and paired_total_us > 0 else None,
        # (the measuring code replaces it with the ratio on the profiler's own clock when it has it)
        "top": top_sites,
        "other_extra": entry(f"{len(rest)} other call sites", "other", sum(s.extra_us for s in rest)),
        "native_only": entry(
            f"{len(fewer)} call sites the adapter spends less in", "fewer", sum(s.extra_us for s in fewer)
        ),
        "unplaced": entry("unplaced (in no profiled function)", "unplaced", unplaced),
        "groups": [
            entry(group, group, us) for group, us in sorted(groups.items(), key=lambda item: -item[1]) if us != 0
        ],
        "placed_share": placed,
        "top_share": share(sum(s.extra_us for s in extra[:top])),
    }


def site_path(filename: str) -> str:
    """A source file as a path inside its package or the repository: never the machine's own path.

    ``.../site-packages/lightning/pytorch/loops/fit_loop.py`` → ``lightning/pytorch/loops/fit_loop.py``;
    ``.../lib/python3.11/logging/__init__.py`` → ``python/logging/__init__.py``; a file of this
    repository → its path from the repository root.
    """
    normalized = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in normalized:
            return normalized.rsplit(marker, 1)[1]
    root = str(Path(__file__).resolve().parents[2]).replace("\\", "/") + "/"
    if normalized.startswith(root):
        return normalized[len(root) :]
    parts = normalized.split("/")
    for index, part in enumerate(parts):
        if part.startswith("python3") and index + 1 < len(parts) and index > 0 and parts[index - 1] == "lib":
            return "python/" + "/".join(parts[index + 1 :])
    if normalized.startswith("<"):
        return normalized  # <frozen importlib._bootstrap>, <string>
    return parts[-1]


def site_group(path: str) -> str:
    """The folder a call site lives in, at most three levels deep: ``lightning/pytorch/loops``."""
    if "/" not in path:
        return path
    folders = path.split("/")[:-1]
    return "/".join(folders[:3])


def instruction_summary(native: Sequence[float], adapter: Sequence[float]) -> dict:
    """Paired instructions per step over rounds (deterministic: the CI shows the round-to-round spread)."""
    result = paired(native, adapter)
    return {key: value.to_dict() if isinstance(value, Interval) else value for key, value in result.items()}


def relative_spread(values: Sequence[float]) -> float | None:
    """(max − min) / mean: how far repeated measurements of one quantity agree (0.001 = 0.1%)."""
    data = _finite(values)
    if data.size < 2 or data.mean() == 0:
        return None
    return float((data.max() - data.min()) / abs(data.mean()))


def worse_arm(spreads: dict | None) -> float | None:
    """The larger of a spread table's ``native`` and ``adapter`` entries (None where neither was measured)."""
    values = [(spreads or {}).get(arm) for arm in ("native", "adapter")]
    return max((value for value in values if isinstance(value, (int, float))), default=None)


def meets_target(difference: Interval | None, native_step_us: float | None) -> dict:
    """The paired target: CI half-width at most max(5 µs, 2% of the native step)."""
    if difference is None or native_step_us is None:
        return {"target_us": None, "half_width_us": None, "met": None}
    target = max(5.0, 0.02 * native_step_us)
    return {"target_us": target, "half_width_us": difference.half_width, "met": difference.half_width <= target}
