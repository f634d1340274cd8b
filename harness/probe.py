"""The measurement probe: each optimizer step's end time and loss, without per-step syncs.

On CPU the end time is ``perf_counter_ns`` (the step's work is done when Python returns). On
CUDA it is an event recorded on the current stream, so the host never waits; events and the
detached loss tensors are resolved once, after training. Losses of micro-batches added
between two step ends are averaged, so an accumulated step reports the mean loss of its
micro-batches whatever the adapter.

Periodic evaluation (for time-to-target) runs inside ``step_end`` every ``eval_every`` steps,
the same harness code for every adapter. Its time is a *pause*: marked before and after, and
subtracted from every later step end, so step times and the fit clock never include it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(kw_only=True)
class Trajectory:
    step_end_ns: list[int]
    """Step end times relative to the start of the adapter's fit (ns)."""
    losses: list[float]
    first_step_wall_ns: int | None
    """Wall-clock (time.time_ns) at the first step end, for start-up time across processes."""
    evals: list[dict[str, float]] = field(default_factory=list)
    """Periodic evaluations: ``step`` (steps done), the evaluator's figures and ``eval_s``."""


class Probe:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[torch.Tensor] = []
        self._step_losses: list[list[torch.Tensor]] = []
        self._ends: list = []
        self._fit_start_ns: int | None = None
        self._fit_start_event = None
        self._first_step_wall_ns: int | None = None
        self._eval_every = 0
        self._evaluate: Callable[[], dict[str, float]] | None = None
        self._evals: list[dict[str, float]] = []
        self._pauses: list[tuple[int, object, object]] = []
        """(steps done when the pause began, start mark, end mark)."""

    def evaluate_every(self, every: int, evaluate: Callable[[], dict[str, float]]) -> None:
        """Call ``evaluate()`` after every ``every``-th step end, outside the measured time."""
        if every < 1:
            raise ValueError(f"eval_every must be >= 1, got {every}")
        self._eval_every, self._evaluate = every, evaluate

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter_ns()

    def fit_start(self) -> None:
        """Mark the start of the adapter's fit (called by the worker, outside the loop)."""
        self._fit_start_ns = time.perf_counter_ns()
        if self.cuda:
            self._fit_start_event = torch.cuda.Event(enable_timing=True)
            self._fit_start_event.record()

    def add_loss(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss (the un-scaled mean over its samples)."""
        self._pending.append(loss.detach())

    def step_end(self, loss: torch.Tensor | None = None) -> None:
        """An optimizer step just finished; ``loss`` is a shortcut for add_loss + step_end."""
        if loss is not None:
            self._pending.append(loss.detach())
        self._ends.append(self._mark())
        if self._first_step_wall_ns is None:
            self._first_step_wall_ns = time.time_ns()
        self._step_losses.append(self._pending)
        self._pending = []
        if self._evaluate is not None and self.steps % self._eval_every == 0:
            start = self._mark()
            figures = self._evaluate()  # syncs the device: it reads the metric on the host
            end = self._mark()
            self._pauses.append((self.steps, start, end))
            self._evals.append({"step": self.steps, **figures})

    @property
    def steps(self) -> int:
        return len(self._ends)

    @property
    def micro_batches(self) -> int | None:
        """Micro-batch losses in completed steps; None when some step reported none (then unknown)."""
        if any(not group for group in self._step_losses):
            return None
        return sum(len(group) for group in self._step_losses)

    def step_losses(self) -> torch.Tensor:
        """Per-step mean micro-batch loss as one float64 CPU tensor (one device sync)."""
        if not self._step_losses:
            return torch.empty(0, dtype=torch.float64)
        means = [
            torch.stack([loss.float() for loss in group]).mean() if group else torch.tensor(float("nan"))
            for group in self._step_losses
        ]
        return torch.stack([m.to(means[0].device) for m in means]).double().cpu()

    def resolve(self, losses: torch.Tensor | None = None) -> Trajectory:
        """Turn marks into numbers; ``losses`` may replace the local ones (e.g. rank-averaged)."""
        if losses is None:
            losses = self.step_losses()
        if self.cuda:
            torch.cuda.synchronize()
            origin = self._fit_start_event
            ends = [int(origin.elapsed_time(event) * 1e6) for event in self._ends] if origin else []
            pauses = [(done, int(start.elapsed_time(end) * 1e6)) for done, start, end in self._pauses]
        else:
            origin_ns = self._fit_start_ns if self._fit_start_ns is not None else (self._ends[0] if self._ends else 0)
            ends = [end - origin_ns for end in self._ends]
            pauses = [(done, end - start) for done, start, end in self._pauses]
        # A pause after step n delays every later step end: take it off them.
        paused, shifted = 0, []
        remaining = iter(pauses)
        upcoming = next(remaining, None)
        for index, end in enumerate(ends):
            while upcoming is not None and upcoming[0] <= index:
                paused += upcoming[1]
                upcoming = next(remaining, None)
            shifted.append(end - paused)
        evals = [dict(record) for record in self._evals]
        for record, (_, pause_ns) in zip(evals, pauses, strict=True):
            record["eval_s"] = pause_ns / 1e9
        return Trajectory(
            step_end_ns=shifted,
            losses=[float(v) for v in losses.tolist()],
            first_step_wall_ns=self._first_step_wall_ns,
            evals=evals,
        )
