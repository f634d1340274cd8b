"""The harness probe with a second clock and a steady-state window, for the cost measurements.

:class:`CostProbe` is :class:`harness.probe.Probe` (the same marks, the same losses) plus the main
thread's CPU time (``time.thread_time_ns``) read at the same step ends, and two hooks that fire at
the edges of the steady-state window: after the end of the last warm-up step and at the end of
the last step. The window is exactly the steps ``harness.durations.after_warmup`` keeps, so an
instruction count, a profile or a sync count taken between the hooks covers the same steps as
the step times. Both arms of every comparison use it, so its own cost is in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from harness.probe import Probe

Hook = Callable[[], None]


class CostProbe(Probe):
    def __init__(
        self,
        device: torch.device,
        *,
        warmup: int,
        steps: int,
        on_window_start: Hook | None = None,
        on_window_end: Hook | None = None,
    ) -> None:
        super().__init__(device)
        if not 0 <= warmup <= steps - 2:
            raise ValueError(f"a cost window needs 2 steps or more after the warm-up (steps {steps}, warm-up {warmup})")
        self.warmup, self.total_steps = warmup, steps
        self._on_start, self._on_end = on_window_start, on_window_end
        self._thread_start_ns: int | None = None
        self.thread_end_ns: list[int] = []
        """Main-thread CPU time at each step end, from fit start (ns)."""
        self.window_open = False

    def fit_start(self) -> None:
        super().fit_start()
        self._thread_start_ns = time.thread_time_ns()
        if self.warmup == 0:
            self._open()

    def step_end(self, loss: torch.Tensor | None = None) -> None:
        thread_now = time.thread_time_ns()
        super().step_end(loss)
        self.thread_end_ns.append(thread_now - (self._thread_start_ns or 0))
        done = self.steps
        if done == self.warmup:
            self._open()
        elif done == self.total_steps and self.window_open:
            self.window_open = False
            if self._on_end is not None:
                self._on_end()

    def _open(self) -> None:
        self.window_open = True
        if self._on_start is not None:
            self._on_start()

    def wall_end_ns(self) -> list[int]:
        """Step end wall times from fit start (ns), as the result's trajectory has them."""
        return self.resolve().step_end_ns
