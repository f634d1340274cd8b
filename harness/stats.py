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


def clean_groups(groups: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Finite values of each group as arrays; empty groups dropped."""
    arrays = [np.asarray([v for v in g if v is not None and math.isfinite(v)], dtype=float) for g in groups]
    return [a for a in arrays if a.size]


def bootstrap_medians(groups: list[np.ndarray], rng: np.random.Generator, samples: int) -> np.ndarray:
    """Two-level bootstrap of the pooled median: repeats with replacement, then steps within each.

    Vectorised: groups are padded to the longest with NaN and each drawn group keeps only its own
    length, so a suite's worth of cells takes seconds, not minutes.
    """
    count = len(groups)
    sizes = np.array([g.size for g in groups])
    longest = int(sizes.max())
    data = np.full((count, longest), np.nan)
    for index, group in enumerate(groups):
        data[index, : group.size] = group
    ragged = bool((sizes != longest).any())
    out = np.empty(samples)
    chunk = max(1, 2_000_000 // (count * longest))
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        chosen = rng.integers(0, count, (k, count)) if count > 1 else np.zeros((k, 1), dtype=int)
        chosen_sizes = sizes[chosen][..., None]
        index = np.floor(rng.random((k, chosen.shape[1], longest)) * chosen_sizes).astype(int)
        values = data[chosen[..., None], index]
        if ragged:
            values = np.where(np.arange(longest) < chosen_sizes, values, np.nan)
            out[start : start + k] = np.nanmedian(values.reshape(k, -1), axis=1)
        else:
            out[start : start + k] = np.median(values.reshape(k, -1), axis=1)
    return out


def interval(value: float, draws: np.ndarray, repeats: int, samples: int) -> Estimate:
    """The percentile CI of ``draws`` around ``value``.

    The percentile interval of a median can exclude the point estimate when the data are tied or
    tiny; it is widened to contain the estimate rather than report an interval that cannot hold it.
    """
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(value, float(min(low, value)), float(max(high, value)), repeats, samples)


def median_ci(groups: Sequence[Sequence[float]], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> Estimate | None:
    """Pooled median of all groups (one group per repeat) with a two-level bootstrap CI."""
    arrays = clean_groups(groups)
    if not arrays:
        return None
    pooled = np.concatenate(arrays)
    draws = bootstrap_medians(arrays, _rng(seed), samples)
    return interval(float(np.median(pooled)), draws, len(arrays), int(pooled.size))


def compare_medians(
    candidate: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    *,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> tuple[Estimate | None, Estimate] | None:
    """(ratio, difference) of pooled medians candidate vs reference, both from the same bootstrap draws.

    Independent two-level bootstraps of each side (the runs are separate processes, not pairs); the
    ratio is None when the reference median is 0. None when either side has no data.
    """
    cand, ref = clean_groups(candidate), clean_groups(reference)
    if not cand or not ref:
        return None
    cand_median, ref_median = float(np.median(np.concatenate(cand))), float(np.median(np.concatenate(ref)))
    rng = _rng(seed)
    cand_draws, ref_draws = bootstrap_medians(cand, rng, samples), bootstrap_medians(ref, rng, samples)
    repeats, count = min(len(cand), len(ref)), int(sum(a.size for a in cand))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = interval(cand_median / ref_median, cand_draws / ref_draws, repeats, count) if ref_median else None
    difference = interval(cand_median - ref_median, cand_draws - ref_draws, repeats, count)
    return ratio, difference


def ratio_ci(
    candidate: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    *,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> Estimate | None:
    """Ratio of pooled medians candidate/reference with a CI from independent two-level bootstraps."""
    compared = compare_medians(candidate, reference, seed=seed, samples=samples)
    return compared[0] if compared else None


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
