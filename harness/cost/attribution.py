"""Where the adapter's extra time per step goes: a deterministic profile of the steady-state steps.

``cProfile`` (deterministic: every Python call and every C function called from Python is an
event) is switched on by the cost probe at the start of the steady-state window and off at its
end, in both arms, over a few rounds. Its timer is the main thread's CPU clock, so another
process taking the core does not land in some function's own time. A call site's *own* time per
step in the adapter arm minus the native arm is what the library adds there;
:func:`harness.cost.analysis.attribute` turns those into shares of the profiled difference and
applies them to the unprofiled paired total, since profiling inflates Python calls far more than
compiled kernels.

Frames entered before the window opened (the library's outer loop, the native loop's own
``fit``) are not charged their own time while the window is open: that time shows as *unplaced*.
"""

from __future__ import annotations

import cProfile
import time

from harness.cost.analysis import site_group, site_path


class WindowProfiler:
    """A cProfile profile that accumulates over several windows (``start``/``stop`` per fit)."""

    def __init__(self) -> None:
        self._profile = cProfile.Profile(time.thread_time_ns, 1e-9)
        self.window_thread_ns = 0
        self.window_steps = 0
        self._opened_at: int | None = None

    def start(self) -> None:
        self._opened_at = time.thread_time_ns()
        self._profile.enable()

    def stop(self) -> None:
        self._profile.disable()
        if self._opened_at is not None:
            self.window_thread_ns += time.thread_time_ns() - self._opened_at
            self._opened_at = None

    def own_time_per_step(self, steps: int) -> dict[str, tuple[str, float]]:
        """Call site → (group, own µs per step) over everything profiled so far.

        A Python function's own time includes the C functions it calls directly (their *inline*
        time when called from it: ``isinstance`` in a hook dispatcher, ``torch._C._nn.linear`` in
        ``Linear.forward``, a clock read in a busy-wait): the call site is where the code that
        spends it was written. A C function's inline time that no profiled Python frame called
        (its caller was entered before profiling began) stays under the C function's own name.
        """
        sites: dict[str, tuple[str, float]] = {}
        leftover: dict[str, float] = {}

        def add(code, seconds: float) -> None:
            site, group = describe(code)
            previous = sites.get(site, (group, 0.0))[1]
            sites[site] = (group, previous + seconds * 1e6 / steps)

        entries = self._profile.getstats()
        for entry in entries:
            if isinstance(entry.code, str):
                leftover[entry.code] = leftover.get(entry.code, 0.0) + entry.inlinetime
        for entry in entries:
            if isinstance(entry.code, str):
                continue
            own = entry.inlinetime
            for call in entry.calls or ():
                if isinstance(call.code, str):
                    own += call.inlinetime
                    leftover[call.code] = leftover.get(call.code, 0.0) - call.inlinetime
            add(entry.code, own)
        for code, seconds in leftover.items():
            if abs(seconds) > 1e-12:
                add(code, seconds)
        return sites


def describe(code) -> tuple[str, str]:
    """A profile entry's call site and group, without the machine's paths."""
    if isinstance(code, str):  # a C function no profiled frame called: "<built-in method torch._C._nn.linear>"
        return code, "C functions (caller not profiled)"
    path = site_path(code.co_filename)
    return f"{path}:{code.co_firstlineno}({code.co_name})", site_group(path)
