"""What a long ``bench`` tells its user: position, elapsed time, time left, and where the results went.

The estimate of the time left comes from the specs run so far in this invocation: each spec still
to run is expected to take as long as the mean of those already run with the same adapter and
the same kind of launch (one process, or torchrun for DDP), else the mean of that kind, else the
mean of all; specs whose result already exists (a resumed suite) cost nothing. Torch-free and
import-light: the CLI calls it from the runner's progress callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from harness.spec import Spec

UI_PORT = 5000
"""The port ``make ui`` serves the MLflow UI on (the Makefile's UI_PORT)."""


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: precise enough to plan with, short enough to read."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _kind(spec: Spec) -> str:
    return "torchrun" if spec.world_size > 1 else "process"


class SuiteProgress:
    """Tracks a suite's run and words its progress; ``done_before`` are spec ids with a result already."""

    def __init__(
        self,
        specs: Iterable[Spec],
        done_before: Iterable[str] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self.specs = list(specs)
        self.done_before = set(done_before)
        self.clock = clock
        self.started = clock() if started is None else started
        """When the user's wait began (``clock`` time): the elapsed time counts from here."""
        self._reported: set[str] = set()
        self._seconds: dict[tuple[str, str], list[float]] = {}

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def record(self, spec: Spec, skipped: bool, seconds: float) -> None:
        """One spec is finished (``skipped``: its result was already there, or another process ran it)."""
        self._reported.add(spec.spec_id)
        if not skipped:
            self._seconds.setdefault((spec.adapter, _kind(spec)), []).append(seconds)

    def expected_seconds(self, spec: Spec) -> float | None:
        """How long a spec still to run should take, from the runs so far; None before any has run."""
        if spec.spec_id in self.done_before:
            return 0.0
        same = self._seconds.get((spec.adapter, _kind(spec)))
        if same:
            return sum(same) / len(same)
        for scope in (
            [s for (_, kind), values in self._seconds.items() if kind == _kind(spec) for s in values],
            [s for values in self._seconds.values() for s in values],
        ):
            if scope:
                return sum(scope) / len(scope)
        return None

    def seconds_left(self) -> float | None:
        """The estimate for every spec not yet finished, or None while nothing has run to base it on."""
        total = 0.0
        for spec in self.specs:
            if spec.spec_id in self._reported:
                continue
            expected = self.expected_seconds(spec)
            if expected is None:
                return None
            total += expected
        return total

    def status(self) -> str:
        """``1 min 42 s elapsed, about 4 min 10 s left`` (or ``estimating`` before the first run ends)."""
        left = self.seconds_left()
        if left is None:
            estimate = "time left: after the first spec that runs"
        elif left == 0:
            estimate = "done"
        else:
            estimate = f"about {duration(left)} left"
        return f"{duration(self.elapsed)} elapsed, {estimate}"

    def line(self, index: int, total: int, text: str, spec: Spec, skipped: bool, seconds: float) -> str:
        """Record the spec and give its progress line: ``[12/44 27%] <text> (8.1 s) · <status>``."""
        self.record(spec, skipped, seconds)
        state = "done earlier" if skipped else f"{seconds:.1f} s"
        done = len(self._reported)
        return f"[{index}/{total}, {100 * done // max(total, 1)}% done] {text} ({state}) · {self.status()}"

    def opening_line(self) -> str | None:
        """Said before the first spec of a resumed suite: how much is already there."""
        already = sum(spec.spec_id in self.done_before for spec in self.specs)
        if not already:
            return None
        return f"resuming: {already} of {len(self.specs)} specs already have a result and are not run again"


def counts_text(results: Iterable[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    order = {"ok": 0, "failed": 1, "unsupported": 2}
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: (order.get(kv[0], 9), kv)))


def summary_line(suite: str, results: list[Mapping[str, Any]], seconds: float, launch: str, results_dir: Path) -> str:
    """The one line a finished suite ends with: what ran, how it ended, how long it took, where it is."""
    return (
        f"suite {suite}: {counts_text(results)} ({len(results)} specs) in {duration(seconds)}, "
        f"{launch}; results in {results_dir}"
    )


def launch_text(zygote: bool) -> str:
    return "workers forked from a zygote" if zygote else "a fresh process per spec"


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def mlflow_ui_hint(uri: str, *, default_uri: str, experiment_id: str | None = None) -> str:
    """How to open the MLflow UI on ``uri`` at the suite's run table (bakeoff's saved view)."""
    from harness.store import view_url

    def link(base: str) -> str:
        return view_url(base, experiment_id) if experiment_id else base

    if uri.startswith(("http://", "https://")):
        return link(_without_credentials(uri))
    local = link(f"http://127.0.0.1:{UI_PORT}")
    if uri == default_uri:
        return f"`make ui`, then {local}"
    return f"`.venv/bin/bakeoff ui --tracking-uri {uri}`, then {local}"


def where_lines(report_file: Path | None, ui_hint: str | None) -> list[str]:
    lines = []
    if report_file is not None:
        lines.append(f"  report:    {report_file}")
    if ui_hint:
        lines.append(f"  MLflow UI: {ui_hint}")
    return lines
