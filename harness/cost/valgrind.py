"""Valgrind client requests from Python: start callgrind's instrumentation, toggle collection, dump.

A client request is a fixed, harmless instruction sequence (four rotates of ``rdi`` that add up to
two full turns, then ``xchg rbx, rbx``) that the CPU runs as a no-op and valgrind recognises; the
request code and its arguments are passed through memory at ``rax`` (``valgrind.h``'s
``VALGRIND_DO_CLIENT_REQUEST``). We assemble that sequence into one executable page and call it with
ctypes, so no compiler and no C extension are needed.

Why not only ``torch._C._valgrind_toggle``: torch exposes *collection* on/off and dump, but not
callgrind's ``START_INSTRUMENTATION``. Importing torch and the training libraries under full
instrumentation is what makes a callgrind process slow (measured here: torch's import took 429 s
instrumented against 135 s with instrumentation off, on the loaded 2-core machine). With these
requests the process imports everything uninstrumented (``--instr-atstart=no``) and switches
instrumentation on once, before the first measured fit.

On a CPU other than x86-64 the page cannot be built; :func:`client` then falls back to torch's
toggles, which need ``--instr-atstart=yes``.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
from dataclasses import dataclass

# callgrind.h: VG_USERREQ_TOOL_BASE('C','T') and the requests in their enum order.
_CALLGRIND_BASE = (ord("C") << 24) | (ord("T") << 16)
DUMP_STATS = _CALLGRIND_BASE
ZERO_STATS = _CALLGRIND_BASE + 1
TOGGLE_COLLECT = _CALLGRIND_BASE + 2
DUMP_STATS_AT = _CALLGRIND_BASE + 3
START_INSTRUMENTATION = _CALLGRIND_BASE + 4
STOP_INSTRUMENTATION = _CALLGRIND_BASE + 5
RUNNING_ON_VALGRIND = 0x1001  # valgrind.h: a core request every tool answers

# unsigned long request(unsigned long *args /* rdi */, unsigned long default /* rsi */)
_AMD64_REQUEST = bytes.fromhex(
    "4889f8"  # mov rax, rdi        (the request block's address)
    "4889f2"  # mov rdx, rsi        (the answer when not under valgrind)
    "48c1c703"  # rol rdi, 3
    "48c1c70d"  # rol rdi, 13
    "48c1c73d"  # rol rdi, 61
    "48c1c733"  # rol rdi, 51       (3 + 13 + 61 + 51 = 128: rdi is unchanged)
    "4887db"  # xchg rbx, rbx      (the request itself; rdx = valgrind's answer)
    "4889d0"  # mov rax, rdx
    "c3"  # ret
)


class ClientRequests:
    """Valgrind client requests through an assembled x86-64 page (no-ops when not under valgrind)."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(_AMD64_REQUEST)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._call = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong)(address)
        self._args = (ctypes.c_ulong * 6)()

    def request(self, code: int, *arguments: int, default: int = 0) -> int:
        self._args[0] = code
        for index in range(5):
            self._args[index + 1] = arguments[index] if index < len(arguments) else 0
        return int(self._call(ctypes.addressof(self._args), default))

    def running_on_valgrind(self) -> bool:
        return self.request(RUNNING_ON_VALGRIND) > 0

    def start_instrumentation(self) -> None:
        self.request(START_INSTRUMENTATION)

    def toggle_collect(self) -> None:
        self.request(TOGGLE_COLLECT)

    def dump_stats(self) -> None:
        self.request(DUMP_STATS)


@dataclass
class TorchRequests:
    """The fallback: torch's own toggles (collection and dump only; run with ``--instr-atstart=yes``)."""

    def running_on_valgrind(self) -> bool:
        import torch

        return bool(torch._C._valgrind_supported_platform())

    def start_instrumentation(self) -> None:
        """Not available through torch: instrumentation must already be on."""

    def toggle_collect(self) -> None:
        import torch

        torch._C._valgrind_toggle()

    def dump_stats(self) -> None:
        import torch

        # torch has no plain dump: toggle twice around the dump so collection ends as it was.
        torch._C._valgrind_toggle_and_dump_stats()
        torch._C._valgrind_toggle()


def instrumentation_can_start() -> bool:
    """Whether this machine's requests can switch instrumentation on (else use --instr-atstart=yes)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def client() -> ClientRequests | TorchRequests:
    return ClientRequests() if instrumentation_can_start() else TorchRequests()
