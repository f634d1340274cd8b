"""What precision a run actually trained in, read off the model rather than the library's option.

A library's precision flag is a request, not evidence: Lightning replaces ``precision="16-mixed"``
with bf16 on CPU (with a warning), and fastai's ``to_fp16()`` and the Trainer's ``fp16=True``
become silent fp32 there. So the worker hooks every module that owns parameters before ``fit``
and records the dtype of each one's output during the training forwards up to the first
optimizer step; then the hooks are removed (the first step is a warm-up step and never counted).
A run whose observed dtypes contradict its spec's precision fails with the reason instead of
being reported under the wrong label.

Compiled runs are not hooked: a hook present while dynamo traces becomes part of the graph. Their
precision is the same library option as the eager run's, which is audited.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
LOW_PRECISION = (torch.float16, torch.bfloat16)

LOWERED_BY_AUTOCAST = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
"""Modules whose output autocast computes in the lower dtype on both CPU and CUDA (matmul and
convolution are on both lower-precision lists); the verdict is read off these. Other modules
(norms, embeddings, recurrent layers) are recorded but not judged: their autocast policy
differs between devices and ops."""


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class PrecisionAudit:
    """Forward hooks that record each parameterised module's output dtype until ``detach``."""

    def __init__(self, model: nn.Module) -> None:
        self.observed: dict[str, set[str]] = {}
        self.judged: dict[str, set[str]] = {}
        self.forwards = 0
        self._handles = []
        for module in model.modules():
            if any(True for _ in module.parameters(recurse=False)):
                self._handles.append(module.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if torch.compiler.is_compiling() or not module.training or not torch.is_grad_enabled():
            return
        tensor = _first_tensor(output)
        if tensor is None or not tensor.is_floating_point():
            return
        kind, dtype = type(module).__name__, str(tensor.dtype).removeprefix("torch.")
        self.observed.setdefault(kind, set()).add(dtype)
        if isinstance(module, LOWERED_BY_AUTOCAST):
            self.judged.setdefault(kind, set()).add(dtype)
        self.forwards += 1

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def record(self) -> dict[str, Any]:
        """The notes entry: observed output dtypes per module type (sorted, JSON-ready)."""
        return {
            "outputs": {kind: sorted(dtypes) for kind, dtypes in sorted(self.observed.items())},
            "judged_on": sorted(self.judged),
            "hooked_forwards": self.forwards,
            "method": "forward hooks on parameterised modules, training forwards before the first optimizer step",
        }


def precision_problem(precision: str, judged: Mapping[str, Iterable[str]]) -> str | None:
    """Why the observed output dtypes contradict ``precision``, or None when they agree.

    ``judged``: module type → output dtypes, for the modules autocast lowers
    (:data:`LOWERED_BY_AUTOCAST`). Nothing observed is no contradiction: a model without such
    modules cannot show its precision this way.
    """
    seen = {kind: set(dtypes) for kind, dtypes in judged.items() if dtypes}
    if not seen:
        return None
    names = {str(dtype).removeprefix("torch.") for dtype in LOW_PRECISION}
    if precision == "fp32":
        lowered = sorted(kind for kind, dtypes in seen.items() if dtypes & names)
        if lowered:
            found = sorted(set().union(*(seen[kind] & names for kind in lowered)))
            return f"fp32 was requested but {', '.join(lowered)} produced {', '.join(found)} outputs"
        return None
    wanted = str(AUTOCAST_DTYPES[precision]).removeprefix("torch.")
    if any(wanted in dtypes for dtypes in seen.values()):
        other = sorted(set().union(*seen.values()) & (names - {wanted}))
        if other:
            return f"{precision} was requested but some outputs were {', '.join(other)}"
        return None
    found = sorted(set().union(*seen.values()))
    return (
        f"{precision} was requested but {', '.join(sorted(seen))} produced only {', '.join(found)} outputs: "
        f"the library trained without {wanted} autocast"
    )
