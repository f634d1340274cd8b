"""Deliberately shifted heap layouts: the instruction counts' layout bias, measured as a spread.

At one commit the instruction pass repeats to a few parts per million. Across commits the counts
move by up to ~0.5% even when no code a step runs has changed. Every object's address depends on
everything allocated before it: a docstring four lines longer in a module the worker imports moved
the keras aligned difference by 0.36%. The interpreter's address-keyed paths then go another way:
type-attribute cache slots keyed by a name's address, and the order of sets and dicts of objects
hashed by identity. This is layout bias. A change in the environment or the link order alone can
move a measurement as far as the change it was meant to show.

A run given layout ``k > 0`` (``BAKEOFF_HEAP_LAYOUT=k`` in its environment) allocates a fixed set
of small objects that depends on ``k``, before torch or any library is imported, and keeps them.
Every object allocated after them then lands elsewhere, much as after a code change. The spread of
the counts over several layouts shows how far layout alone moves them, which is what the next
unrelated commit may move them by. Their mean is less tied to one layout than any single run.

This module imports nothing but ``os``. :mod:`harness.cost.instructions` imports it before torch.
"""

from __future__ import annotations

import os

ENV = "BAKEOFF_HEAP_LAYOUT"
OBJECTS_PER_LAYOUT = 97
"""Objects each layout step adds: enough to reach every small-object size class several times."""
LARGEST = 512
"""pymalloc serves requests up to 512 bytes from its pools; the padding stays below that."""


def padding_sizes(layout: int) -> list[int]:
    """What layout ``layout`` allocates, one entry per object: none for 0, else sizes over every size class.

    0 stands for a bare ``object()`` (16 bytes), -1 for an int outside the small-int cache (32),
    n > 0 for ``bytes(n)`` (n plus a 33-byte header: 48 bytes and up).
    """
    if layout < 0:
        raise ValueError(f"a heap layout is a non-negative integer, not {layout}")
    sizes = []
    state = 0x9E3779B9 ^ layout
    for _ in range(OBJECTS_PER_LAYOUT * layout):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF  # a fixed stream: layout k is the same in every run
        draw = (state >> 8) % LARGEST  # 1 in 16 a bare object, 1 in 16 an int, else bytes(1..448)
        sizes.append(0 if draw < 32 else -1 if draw < 64 else draw - 63)
    return sizes


def _allocate(size: int, index: int) -> object:
    if size == 0:
        return object()
    if size == -1:
        return 1_000_000 + index  # computed here, so a new int object
    return bytes(size)


def requested(environ: os._Environ | dict[str, str] = os.environ) -> int:
    """The layout this process was started with (0 when none was asked for)."""
    value = environ.get(ENV, "0")
    try:
        layout = int(value)
    except ValueError:
        raise ValueError(f"{ENV} must be a non-negative integer, not {value!r}") from None
    if layout < 0:
        raise ValueError(f"{ENV} must be a non-negative integer, not {value!r}")
    return layout


try:
    LAYOUT = requested()
except ValueError as error:  # a caller's bad value: one line, not a traceback from an import
    raise SystemExit(f"bakeoff: error: {error}") from None
PADDING = tuple(_allocate(size, index) for index, size in enumerate(padding_sizes(LAYOUT)))
"""Held for the life of the process (and of every cell forked from it)."""
