"""The measurement probe: each optimizer step's end time and loss, without per-step syncs.

On CPU the end time is ``perf_counter_ns`` (the step's work is done when Python returns). On
CUDA it is an event recorded on the current stream, so the host never waits; events and the
detached loss tensors are resolved once, after training. Losses of micro-batches added
between two step ends are averaged, so an accumulated step reports the mean loss of its
micro-batches whatever the adapter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class Trajectory:
    step_end_ns: list[int]
    """Step end times relative to the start of the adapter's fit (ns)."""
    losses: list[float]
    first_step_wall_ns: int | None
    """Wall-clock (time.time_ns) at the first step end, for start-up time across processes."""


class Probe:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list[torch.Tensor] = []
        self._step_losses: list[list[torch.Tensor]] = []
        self._ends: list = []
        self._fit_start_ns: int | None = None
        self._fit_start_event = None
        self._first_step_wall_ns: int | None = None

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
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._ends.append(event)
        else:
            self._ends.append(time.perf_counter_ns())
        if self._first_step_wall_ns is None:
            self._first_step_wall_ns = time.time_ns()
        self._step_losses.append(self._pending)
        self._pending = []

    @property
    def steps(self) -> int:
        return len(self._ends)

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
        else:
            origin_ns = self._fit_start_ns if self._fit_start_ns is not None else (self._ends[0] if self._ends else 0)
            ends = [end - origin_ns for end in self._ends]
        return Trajectory(
            step_end_ns=ends,
            losses=[float(v) for v in losses.tolist()],
            first_step_wall_ns=self._first_step_wall_ns,
        )
