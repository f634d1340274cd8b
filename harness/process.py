"""Process lifetime: no worker or rank outlives the orchestrator that started it.

Two mechanisms, because either alone has a hole:

- ``PR_SET_PDEATHSIG`` asks Linux to SIGKILL a process when its parent dies. It is armed in the
  child after ``fork``; a parent that died *before* the ``prctl`` call is never signalled, so the
  child checks ``os.getppid()`` against the parent it expected right after arming it.
- Ranks under torchrun have torchrun as their parent, and torchrun may itself be gone before a
  rank arms its signal. Every worker therefore also watches the orchestrator's PID, passed in
  ``BAKEOFF_ORCHESTRATOR_PID`` with its start time (so a reused PID is not mistaken for it), and
  exits as soon as that process is gone.

Torch-free and import-light: the runner (orchestrator side) and the worker both use it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

ORCHESTRATOR_ENV = "BAKEOFF_ORCHESTRATOR_PID"
"""``<pid>:<start ticks>`` of the orchestrating process, set by the runner for its workers."""
WATCH_INTERVAL_S = 0.5


def _prctl_pdeathsig() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return False


def die_with_parent(expected_parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone.

    ``expected_parent`` is the PID the parent had before forking (the runner passes its own).
    Without it the current parent is taken as given, which is right when this runs first thing
    in a process whose parent cannot have died yet. A no-op where prctl is unavailable.
    """
    if not _prctl_pdeathsig():
        return
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the parent died between fork and prctl: nobody would ever signal us


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def orchestrator_token(pid: int | None = None) -> str:
    """The value of ``BAKEOFF_ORCHESTRATOR_PID`` for this (or the given) process."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{process_start_ticks(pid) or 0}"


def alive(token: str) -> bool:
    """Whether the process named by an orchestrator token is still the same running process."""
    pid_text, _, ticks_text = token.partition(":")
    try:
        pid, ticks = int(pid_text), int(ticks_text or 0)
    except ValueError:
        return True  # a malformed token cannot prove anything died
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    current = process_start_ticks(pid)
    if ticks and current is not None and current != ticks:
        return False  # the PID was reused by another process
    if current is None:
        return True
    try:  # a zombie (dead, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().decode("ascii", "replace")
        return state[state.rfind(")") + 2 :].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def watch_orchestrator(token: str | None = None, *, interval_s: float = WATCH_INTERVAL_S) -> threading.Thread | None:
    """Exit this process (SIGKILL to itself) once the orchestrator is gone; checks every ``interval_s``.

    Reads ``BAKEOFF_ORCHESTRATOR_PID`` when no token is given; does nothing without one (a worker
    started by hand). The check is a ``kill(pid, 0)`` and a small ``/proc`` read, on a daemon
    thread that sleeps between checks.
    """
    token = token if token is not None else os.environ.get(ORCHESTRATOR_ENV)
    if not token:
        return None
    if not alive(token):
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if not alive(token):
                os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="bakeoff-orchestrator-watch", daemon=True)
    thread.start()
    return thread
