"""Step durations from step end times, and the warm-up rule: torch-free, shared by every reader.

The worker summarises a run with these, the regression gate and the report recompute them from
stored step ends, and the paired cost measurement uses them on its own rounds, so one rule
decides which steps count everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence


def step_durations_ns(step_end_ns: Sequence[int]) -> list[int]:
    """Each step's duration: the first from fit start, the rest between consecutive step ends."""
    ends = list(step_end_ns)
    return [end - previous for previous, end in zip([0, *ends[:-1]], ends)]


def after_warmup(durations: Sequence, warmup: int) -> list:
    """The steps that count: all but the first ``warmup``.

    A run too short to keep at least two steps after its warm-up drops only the first step (it
    holds the library's set-up), and a one-step run keeps its only step.
    """
    if len(durations) > warmup + 1:
        return list(durations[warmup:])
    return list(durations[1:]) or list(durations)


def measured_steps_us(step_end_ns: Sequence[int], warmup: int) -> list[float]:
    """Per-step durations in µs after the warm-up steps."""
    return [d / 1e3 for d in after_warmup(step_durations_ns(step_end_ns), warmup)]
