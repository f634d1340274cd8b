"""Reading callgrind's output files: a dump's total and each function's own (exclusive) cost.

A dump (``callgrind.out.<pid>.<part>-<thread>``) lists, per function (``fn=``), cost lines
``<position> <Ir>``. A cost line right after ``calls=`` is the *inclusive* cost of that call (the
callee's whole subtree) and belongs to the callee, so it is skipped here; every other cost line is
the function's own cost. Names are compressed (``fn=(12) name`` defines id 12, later ``fn=(12)``
refers to it) in separate namespaces for objects, files and functions. Functions are keyed by
their object's file name and their name (``libtorch_cpu.so: at::native::add``): never a
machine path. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_COMPRESSED = re.compile(r"^\((\d+)\)(?:\s(.*))?$")
_RECURSION = re.compile(r"'\d+$")
"""callgrind names a function's recursion levels ``f'2``, ``f'3``: one function for the tables."""
_FILE_NAME = re.compile(r"^(?P<base>.+?)(?:\.(?P<part>\d+))?(?:-(?P<thread>\d+))?$")


@dataclass
class Dump:
    part: int
    thread: int
    trigger: str
    total: int
    """The ``totals:`` (or ``summary:``) instruction count of the dump."""
    functions: dict[str, int] = field(default_factory=dict)
    """``object: function`` → own instructions (Ir)."""


def _resolve(table: dict[str, str], value: str) -> str:
    match = _COMPRESSED.match(value.strip())
    if not match:
        return value.strip()
    key, name = match.groups()
    if name is not None:
        table[key] = name
        return name
    return table.get(key, f"({key})")


def _object_name(path: str) -> str:
    return path.rsplit("/", 1)[-1] if path else "???"


def parse(path: Path) -> Dump:
    """One callgrind dump file: its part, thread, trigger, total Ir and own Ir per function."""
    objects: dict[str, str] = {}
    files: dict[str, str] = {}
    names: dict[str, str] = {}
    part, thread, trigger, total = 0, 1, "", None
    summary = None
    functions: dict[str, int] = {}
    current_object, current_function = "???", None
    skip_next_cost = False
    event_index = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            first = line[0]
            if first.isdigit() or first in "+-*":
                if skip_next_cost:
                    skip_next_cost = False
                    continue
                if current_function is None:
                    continue
                parts = line.split()
                if len(parts) > 1 + event_index:
                    cost = int(parts[1 + event_index])
                    key = f"{current_object}: {current_function}"
                    functions[key] = functions.get(key, 0) + cost
                continue
            key, _, value = line.partition("=")
            if key == "fn":
                current_function = _RECURSION.sub("", _resolve(names, value))
            elif key == "ob":
                current_object = _object_name(_resolve(objects, value))
            elif key == "cfn" or key == "cfl" or key == "cfi":
                _resolve(names if key == "cfn" else files, value)
            elif key == "cob":
                _resolve(objects, value)
            elif key in ("fl", "fi", "fe"):
                _resolve(files, value)
            elif key in ("calls", "jump", "jcnd"):  # the next cost line is the call's (or jump's), not fn's own
                skip_next_cost = True
            elif ":" in line:
                header, _, rest = line.partition(":")
                rest = rest.strip()
                if header == "part":
                    part = int(rest)
                elif header == "thread":
                    thread = int(rest)
                elif header == "desc" and rest.startswith("Trigger:"):
                    trigger = rest.split(":", 1)[1].strip()
                elif header == "events":
                    events = rest.split()
                    event_index = events.index("Ir") if "Ir" in events else 0
                elif header == "totals":
                    total = int(rest.split()[event_index])
                elif header == "summary":
                    summary = int(rest.split()[event_index])
    if total is None:
        total = summary if summary is not None else sum(functions.values())
    return Dump(part=part, thread=thread, trigger=trigger, total=total, functions=functions)


def dump_files(
    folder: Path, pid: int | None = None, thread: int = 1, prefix: str = "callgrind.out."
) -> dict[int, Path]:
    """Client-request dumps in ``folder`` by part number, for one thread (1: the main thread).

    With ``--separate-threads=yes`` callgrind names them ``<base>.<part>-<thread>``; without it,
    ``<base>.<part>``. The dump written at program exit has no part number and is left out.
    """
    found: dict[int, Path] = {}
    for path in Path(folder).iterdir():
        if not path.name.startswith(prefix):
            continue
        stem = path.name[len(prefix) :]
        match = _FILE_NAME.match(stem)
        if not match or match["part"] is None:
            continue
        if pid is not None and match["base"] != str(pid):
            continue
        if match["thread"] is not None and int(match["thread"]) != thread:
            continue
        found[int(match["part"])] = path
    return found


def group_of(function: str) -> str:
    """The object a function lives in, for grouping: ``libtorch_cpu.so``, ``libpython3.11.so.1.0``."""
    return function.split(": ", 1)[0]
