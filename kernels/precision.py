"""Precision as objects: a forward context, a backward and an optimizer step.

fp32 is the concrete base class whose hooks do the plain thing; mixed precision overrides them
with autocast and, for fp16 only, a GradScaler. Adapters whose library has its own precision
option map the harness name onto it instead and record what they used.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from kernels.precision_names import PRECISIONS


class PrecisionError(ValueError):
    """A precision that does not exist or cannot run on the chosen device."""


class Precision:
    """Full fp32: no autocast, no scaling."""

    name = "fp32"
    autocast_dtype: torch.dtype | None = None

    def forward_context(self) -> AbstractContextManager:
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps a GradScaler skipped on overflow (always 0 without one)."""
        return 0


class MixedPrecision(Precision):
    """Autocast around the forward pass (and loss); a GradScaler when the dtype is fp16."""

    def __init__(self, name: str, dtype: torch.dtype, device_type: str) -> None:
        self.name = name
        self.autocast_dtype = dtype
        self.device_type = device_type
        self.scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
        self._scales: list[torch.Tensor] = []

    def forward_context(self) -> AbstractContextManager:
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
        # Keep the scale as a device tensor (no host sync per step); update() lowers it exactly
        # when step() skipped the update because of inf/NaN gradients.
        self._scales.append(self.scaler._scale.detach().clone())

    @property
    def skipped_steps(self) -> int:
        if not self._scales:
            return 0
        scales = torch.stack(self._scales).cpu()
        initial = torch.tensor([self.scaler._init_scale], dtype=scales.dtype)
        history = torch.cat([initial, scales])
        return int((history[1:] < history[:-1]).sum())


def make_precision(name: str, device_type: str) -> Precision:
    """The precision object for ``name`` on ``device_type`` ("cpu" or "cuda")."""
    if name == "fp32":
        return Precision()
    if name == "bf16-mixed":
        return MixedPrecision(name, torch.bfloat16, device_type)
    if name == "fp16-mixed":
        if device_type != "cuda":
            raise PrecisionError("fp16-mixed needs a CUDA device (GradScaler + fp16 autocast); use bf16-mixed on CPU")
        return MixedPrecision(name, torch.float16, device_type)
    raise PrecisionError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")
