"""A benchmark cell: the runs that measure the same thing (seeds and repeats pooled). Torch-free.

The report's tables and the regression gate group runs into cells, and normalise each cell by the
native aligned cell it is measured against; both use this one definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


def options_text(options: Mapping[str, Any]) -> str:
    """Task options as ``k=v,k=v`` in key order: how tables and cell names show them."""
    return ",".join(f"{k}={v}" for k, v in sorted(options.items()))


class Cell(NamedTuple):
    task: str
    options: str
    """``options_text`` of the task options ('' without options)."""
    adapter: str
    mode: str
    precision: str
    world_size: int
    grad_accum: int
    batch_size: int
    device: str

    @classmethod
    def of_spec(cls, spec: Mapping[str, Any]) -> Cell:
        return cls(
            spec["task"], options_text(spec.get("options", {})), spec["adapter"], spec["mode"], spec["precision"],
            spec["world_size"], spec["grad_accum"], spec["batch_size"], spec["device"],
        )

    @property
    def native(self) -> Cell:
        """The native aligned cell this one is measured against."""
        return self._replace(adapter="native", mode="aligned")

    @property
    def is_reference(self) -> bool:
        return self.adapter == "native" and self.mode == "aligned"

    @property
    def task_key(self) -> str:
        return self.task + (f"[{self.options}]" if self.options else "")

    @property
    def global_batch(self) -> int:
        return (self.batch_size or 0) * (self.world_size or 1) * (self.grad_accum or 1)

    def describe(self, *, with_adapter: bool = True) -> str:
        parts = [self.task_key]
        if with_adapter:
            parts += [self.adapter, self.mode]
        parts.append(self.precision)
        if self.world_size and self.world_size > 1:
            parts.append(f"ws{self.world_size}")
        if self.grad_accum and self.grad_accum > 1:
            parts.append(f"acc{self.grad_accum}")
        parts.append(f"b{self.batch_size}")
        return " ".join(str(p) for p in parts)
