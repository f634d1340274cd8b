"""The thread layout a result ran with, for deciding which runs can be bitwise partners (no torch here).

CPU float reductions depend on the intra-op thread count, so two runs are the same computation
only with the same count on every rank. A result records it in ``result["threads"]``:
``requested`` (the spec's ``threads``; None = the automatic split), ``source``, and ``per_rank``
(what each rank actually ran with, gathered after training). Results written before the layout
was recorded have only ``environment.torch_threads`` (rank 0's count at the end of the run).
"""

from __future__ import annotations

from typing import Any


def thread_layout(result: dict[str, Any]) -> tuple[int | None, ...] | None:
    """Per-rank thread counts of ``result``; None for a rank it does not state; None when it states nothing."""
    per_rank = (result.get("threads") or {}).get("per_rank")
    if per_rank:
        return tuple(per_rank)
    rank0 = (result.get("environment") or {}).get("torch_threads")
    if rank0 is None:
        return None
    world_size = int((result.get("spec") or {}).get("world_size", 1))
    return (rank0, *([None] * (world_size - 1)))


def same_thread_layout(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """True/False when both results state every rank's count; None when either leaves one unknown."""
    first, second = thread_layout(a), thread_layout(b)
    if first is None or second is None or None in first or None in second:
        return None
    return first == second
