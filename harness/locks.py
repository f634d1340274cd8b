"""One advisory lock helper for the places that serialise work through a lock file."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def exclusive(handle: IO) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on an open file; yields whether the lock was taken.

    Filesystems without ``flock`` (some network mounts) raise OSError: the body then runs
    unlocked and the caller's own atomic step (``O_EXCL``, a store-side check) has to decide.
    """
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        locked = True
    except OSError:
        locked = False
    try:
        yield locked
    finally:
        if locked:
            fcntl.flock(handle, fcntl.LOCK_UN)
