"""Statistics for step times: medians with bootstrap CIs that include run-to-run variation.

On a shared machine the spread between processes dwarfs the spread within one (the same
native loop measured 292 and 455 µs/step in two processes minutes apart, each with a ±1 µs
within-run CI). So every CI here resamples at two levels: first which repeats (processes)
were run, then which steps within each — a figure resting on one repeat says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
ALPHA = 0.01
"""Mann–Whitney U significance threshold for 'measurably different from native'."""


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    repeats: int
    samples: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _clean(groups: Sequence[Sequence[float]]) -> list[np.ndarray]:
    arrays = [np.asarray([v for v in g if v is not None and math.isfinite(v)], dtype=float) for g in groups]
    return [a for a in arrays if a.size]


def _resampled_medians(groups: list[np.ndarray], rng: np.random.Generator, samples: int) -> np.ndarray:
    """Two-level bootstrap of the pooled median: repeats with replacement, then steps within each."""
    medians = np.empty(samples)
    count = len(groups)
    for i in range(samples):
        chosen = rng.integers(0, count, count) if count > 1 else np.zeros(1, dtype=int)
        pooled = np.concatenate([groups[j][rng.integers(0, groups[j].size, groups[j].size)] for j in chosen])
        medians[i] = np.median(pooled)
    return medians


def median_ci(groups: Sequence[Sequence[float]], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> Estimate | None:
    """Pooled median of all groups (one group per repeat) with a two-level bootstrap CI."""
    arrays = _clean(groups)
    if not arrays:
        return None
    pooled = np.concatenate(arrays)
    value = float(np.median(pooled))
    medians = _resampled_medians(arrays, _rng(seed), samples)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    # The percentile interval of a median can exclude the point estimate when the data are tied
    # or tiny; widen it to contain the estimate rather than report an interval that cannot hold it.
    return Estimate(value, float(min(low, value)), float(max(high, value)), len(arrays), int(pooled.size))


def ratio_ci(
    candidate: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    *,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> Estimate | None:
    """Ratio of pooled medians candidate/reference with a CI from independent two-level bootstraps."""
    cand, ref = _clean(candidate), _clean(reference)
    if not cand or not ref:
        return None
    value = float(np.median(np.concatenate(cand)) / np.median(np.concatenate(ref)))
    rng = _rng(seed)
    ratios = _resampled_medians(cand, rng, samples) / _resampled_medians(ref, rng, samples)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return Estimate(
        value, float(min(low, value)), float(max(high, value)), min(len(cand), len(ref)), int(sum(a.size for a in cand))
    )


def mann_whitney(candidate: Sequence[float], reference: Sequence[float], *, alpha: float = ALPHA) -> dict:
    """Two-sided Mann–Whitney U on step times; 'no measurable difference' is a result too."""
    from scipy.stats import mannwhitneyu

    a = [v for v in candidate if math.isfinite(v)]
    b = [v for v in reference if math.isfinite(v)]
    if len(a) < 3 or len(b) < 3:
        return {"p_value": None, "verdict": "too few samples", "alpha": alpha}
    if np.array_equal(np.sort(a), np.sort(b)):
        return {"p_value": 1.0, "verdict": "no measurable difference", "alpha": alpha}
    p_value = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    if p_value >= alpha:
        verdict = "no measurable difference"
    else:
        verdict = "slower" if np.median(a) > np.median(b) else "faster"
    return {"p_value": p_value, "verdict": verdict, "alpha": alpha}


def linear_fit(x: Sequence[float], y: Sequence[float], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """Least-squares y = fixed + slope·x with bootstrap CIs over points (for the scaling sweep)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < 2 or np.unique(xs).size < 2:
        return {"fixed": None, "slope": None}
    slope, fixed = np.polyfit(xs, ys, 1)
    rng = _rng(seed)
    fits = []
    for _ in range(samples):
        index = rng.integers(0, xs.size, xs.size)
        if np.unique(xs[index]).size < 2:
            continue
        fits.append(np.polyfit(xs[index], ys[index], 1))
    fits_array = np.asarray(fits)
    tail = (1 - CONFIDENCE) / 2 * 100
    slope_ci = np.percentile(fits_array[:, 0], [tail, 100 - tail])
    fixed_ci = np.percentile(fits_array[:, 1], [tail, 100 - tail])
    return {
        "fixed": float(fixed),
        "fixed_ci": (float(min(fixed_ci[0], fixed)), float(max(fixed_ci[1], fixed))),
        "slope": float(slope),
        "slope_ci": (float(min(slope_ci[0], slope)), float(max(slope_ci[1], slope))),
        "points": int(xs.size),
    }
