"""A fixed stream of entropy for the instruction-count process, so libraries that draw it repeat.

Instruction counts repeat between two processes only if both build the same objects at the same
addresses (CPython's type-attribute cache and sets of objects hash by address). Some libraries draw
OS entropy without a seed while they are imported or fit. The case that showed it: importing
Keras imports scikit-learn's wrapper and, through it, ``scipy.stats``, which renders each new
distribution's docstring example from an unseeded numpy generator. The float reprs, the string
sizes and every address after them then differed from run to run. With ``PYTHONHASHSEED`` fixed and
address randomization off, ``sys.getallocatedblocks()`` after ``import torch, keras`` still differed
between processes (1904999, 1905011 and 1905036). With the entropy pinned, three processes agreed
(1905109 each).

:func:`pin_entropy` replaces the sources Python code draws from: ``os.urandom`` (``uuid.uuid4``,
``secrets``), the ``random`` module's private ``_urandom``, which ``random.SystemRandom`` and with it
``secrets.randbits`` read (numpy's ``SeedSequence()`` draws through ``secrets.randbits``), and the
``random`` module's global generator, which is reseeded. Not reached: entropy read by C code
(``getrandom`` called from a library's C or C++, the seed of a ``random.Random()`` created without
one). Only the counting worker pins its entropy. It measures; it does not train anything a user keeps.
"""

from __future__ import annotations

import hashlib
import os
import random


class EntropyStream:
    """Bytes from SHA-256 over (seed, counter): fixed for a seed, and they look random."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def read(self, size: int) -> bytes:
        if size < 0:
            raise ValueError("negative argument not allowed")
        while len(self._buffer) < size:
            self._counter += 1
            self._buffer += hashlib.sha256(f"bakeoff-entropy:{self._seed}:{self._counter}".encode()).digest()
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def pin_entropy(seed: int) -> EntropyStream:
    """From now on this process's Python-level entropy is the fixed stream of ``seed``."""
    stream = EntropyStream(seed)
    os.urandom = stream.read
    random._urandom = stream.read  # what SystemRandom (and so secrets, numpy's SeedSequence) reads
    random.seed(seed)
    return stream
