"""Adapters with a known, planted per-step cost, for proving the cost measurements on known answers.

Registered through the ``bakeoff.adapters`` entry-point group by the dist-info folder beside this
file, as a third party would. Each is the native loop with one thing added per optimizer step:

- ``cost-busy50``: :func:`planted_busy_wait`, 50 µs of the main thread's CPU time, self-timed with
  ``time.thread_time_ns`` so the cost is the same whatever else the machine runs (a wall-clock wait
  would shrink when another process takes the core during it);
- ``cost-busy2000``: the same wait for 2 ms, a cost large against a loaded machine's round-to-round
  noise, so a test can require its CI to exclude zero whatever the load;
- ``cost-item2``: two ``loss.item()`` calls per step, i.e. two host syncs per step on a GPU.
"""

from __future__ import annotations

import time

from adapters.native import NativeAdapter

PLANTED_NS = 50_000
SPIN = 64
"""Empty iterations between clock reads (~1 µs): the wait's own time stays in its own frame."""


def planted_busy_wait(duration_ns: int = PLANTED_NS) -> None:
    """Spin until this thread has used ``duration_ns`` more CPU time."""
    end = time.thread_time_ns() + duration_ns
    while time.thread_time_ns() < end:
        for _ in range(SPIN):
            pass


class _PlantingProbe:
    """Forwards to the real probe; ``before_step_end``/``on_loss`` add the planted work."""

    def __init__(self, probe, *, before_step_end=None, on_loss=None) -> None:
        self._probe, self._before_step_end, self._on_loss = probe, before_step_end, on_loss

    def add_loss(self, loss) -> None:
        if self._on_loss is not None:
            self._on_loss(loss)
        self._probe.add_loss(loss)

    def step_end(self, loss=None) -> None:
        if self._before_step_end is not None:
            self._before_step_end()
        self._probe.step_end(loss)

    @property
    def steps(self) -> int:
        return self._probe.steps


class BusyWaitAdapter(NativeAdapter):
    name = "cost-busy50"
    planted_ns = PLANTED_NS

    def fit(self, job):
        job.probe = _PlantingProbe(job.probe, before_step_end=lambda: planted_busy_wait(self.planted_ns))
        return super().fit(job)


class LongBusyWaitAdapter(BusyWaitAdapter):
    name = "cost-busy2000"
    planted_ns = 2_000_000


def _two_items(loss) -> None:
    loss.item()
    loss.item()


class TwoItemsAdapter(NativeAdapter):
    name = "cost-item2"

    def fit(self, job):
        job.probe = _PlantingProbe(job.probe, on_loss=_two_items)
        return super().fit(job)
