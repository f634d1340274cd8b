"""The measurement probe: each optimizer step's end time and loss, without per-step syncs.

On CPU the end time is ``perf_counter_ns`` (the step's work is done when Python returns). On
CUDA it is an event recorded on the current stream, so the host never waits; events and the
detached loss tensors are resolved once, after training. Losses of micro-batches added
between two step ends are averaged, so an accumulated step reports the mean loss of its
micro-batches whatever the adapter.

Periodic evaluation (for time-to-target) runs inside ``step_end`` every ``eval_every`` steps,
the same harness code for every adapter. Its time is a *pause*: marked before and after, and
subtracted from every later step end, so step times and the fit clock never include it.

Compilation is a pause too (``track_compiles``): torch.compile compiles lazily, inside the first
call of a compiled function (and again on a recompile), i.e. inside some step. Dynamo's
compile-start/compile-end callbacks (frames, lazily compiled backward graphs, CUDA-graph
recording) mark it, it is subtracted from that step and every later step end, and its length
is reported as its own figure (``compile_s``, host clock). On CUDA the subtracted part is the
gap between two events recorded at compile start and end, i.e. the time the device sat idle
waiting for the compiler.
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
    compiles: list[dict[str, float]] = field(default_factory=list)
    """Compilations inside the fit: ``step`` (steps done when it began), ``compile_s`` (host clock)
    and ``paused_s`` (what was taken off the step clock; the device's idle gap on CUDA)."""


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
        self._first_step_callbacks: list[Callable[[], None]] = []
        self._compiles: list[tuple[int, object, object, int, int]] = []
        """(steps done when the compile began, start mark, end mark, host start ns, host end ns)."""
        self._compile_open: tuple[int, object, int] | None = None
        self._compile_callbacks: tuple[Callable, Callable] | None = None

    def track_compiles(self) -> bool:
        """Pause the step clock while torch.compile compiles; False when this torch has no compile callbacks."""
        handler = getattr(getattr(torch, "_dynamo", None), "callback_handler", None)
        if handler is None or self._compile_callbacks is not None:
            return self._compile_callbacks is not None

        # Dynamo may run these callbacks from inside a frame it is evaluating (Keras compiles the whole
        # train step, and the lazily compiled backward starts from within it); it must not try to
        # compile the callbacks themselves, which would re-enter its callback lock and deadlock.
        @torch.compiler.disable
        def started(*args) -> None:
            self._compile_open = (self.steps, self._mark(), time.perf_counter_ns())

        @torch.compiler.disable
        def ended(*args) -> None:
            if self._compile_open is None:
                return
            done, start, host_start = self._compile_open
            self._compile_open = None
            self._compiles.append((done, start, self._mark(), host_start, time.perf_counter_ns()))

        handler.register_start_callback(started)
        handler.register_end_callback(ended)
        self._compile_callbacks = (started, ended)
        return True

    def stop_tracking_compiles(self) -> None:
        if self._compile_callbacks is None:
            return
        handler = torch._dynamo.callback_handler
        started, ended = self._compile_callbacks
        handler.remove_start_callback(started)
        handler.remove_end_callback(ended)
        self._compile_callbacks = None

    @property
    def compile_s(self) -> float:
        """Host time spent compiling so far (seconds)."""
        return sum(end - start for *_, start, end in self._compiles) / 1e9

    def after_first_step(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, right after the first step end is marked (e.g. to remove audit hooks)."""
        self._first_step_callbacks.append(callback)

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
            callbacks, self._first_step_callbacks = self._first_step_callbacks, []
            for callback in callbacks:
                callback()
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
            compiles = [(done, int(start.elapsed_time(end) * 1e6)) for done, start, end, *_ in self._compiles]
        else:
            origin_ns = self._fit_start_ns if self._fit_start_ns is not None else (self._ends[0] if self._ends else 0)
            ends = [end - origin_ns for end in self._ends]
            pauses = [(done, end - start) for done, start, end in self._pauses]
            compiles = [(done, end - start) for done, start, end, *_ in self._compiles]
        # A pause after step n delays every later step end: take it off them. A compile that began
        # after n steps lies inside step n + 1, so it comes off that step's end and every later one.
        paused, shifted = 0, []
        remaining = iter(sorted(pauses + compiles, key=lambda pause: pause[0]))
        upcoming = next(remaining, None)
        for index, end in enumerate(ends):
            while upcoming is not None and upcoming[0] <= index:
                paused += upcoming[1]
                upcoming = next(remaining, None)
            shifted.append(end - paused)
        evals = [dict(record) for record in self._evals]
        for record, (_, pause_ns) in zip(evals, pauses, strict=True):
            record["eval_s"] = pause_ns / 1e9
        compile_records = [
            {"step": done, "compile_s": (host_end - host_start) / 1e9, "paused_s": paused_ns / 1e9}
            for (done, *_, host_start, host_end), (_, paused_ns) in zip(self._compiles, compiles, strict=True)
        ]
        return Trajectory(
            step_end_ns=shifted,
            losses=[float(v) for v in losses.tolist()],
            first_step_wall_ns=self._first_step_wall_ns,
            evals=evals,
            compiles=compile_records,
        )
