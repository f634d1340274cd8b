"""Precision as objects: a forward context, a backward and an optimizer step.

fp32 is the concrete base class whose hooks do the plain thing; mixed precision overrides them
with autocast and, for fp16 only, a GradScaler. Adapters whose library has its own precision
option map the harness name onto it instead and record what they used.

fp16-mixed runs on CPU as well as on CUDA: torch's CPU autocast has a float16 path (matmuls and
convolutions in fp16, the fp32 list — losses, norms, softmax — in fp32) and
``torch.amp.GradScaler("cpu")`` scales, unscales, skips overflowed steps and updates its scale
exactly as the CUDA one does. So the GradScaler logic of every adapter is testable on CPU; only
the speed of fp16 arithmetic is a GPU question.
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
        if self.scaler is None:
            return 0
        return skipped_from_scales(self.scaler._init_scale, self._scales)

    def describe_scaler(self) -> str | None:
        """What scaled the loss, for the result's notes (None without a scaler)."""
        return None if self.scaler is None else f"torch.amp.GradScaler({self.device_type!r})"


def skipped_from_scales(initial_scale: float, scales: list[torch.Tensor]) -> int:
    """Optimizer steps a GradScaler skipped, from its scale recorded after every ``update()``.

    ``update()`` multiplies the scale by ``backoff_factor`` (< 1) exactly when the step found
    inf/NaN gradients and was skipped, and only ever raises it otherwise (growth), so each drop
    is one skipped step. Scales are kept as device tensors during training (no host sync) and
    read once here.
    """
    if not scales:
        return 0
    history = torch.stack([scale.detach().float().reshape(()) for scale in scales]).cpu()
    history = torch.cat([torch.tensor([float(initial_scale)]), history])
    return int((history[1:] < history[:-1]).sum())


def make_precision(name: str, device_type: str) -> Precision:
    """The precision object for ``name`` on ``device_type`` ("cpu" or "cuda")."""
    if device_type not in ("cpu", "cuda"):
        raise PrecisionError(f"unknown device type {device_type!r}; choose one of: cpu, cuda")
    if name == "fp32":
        return Precision()
    if name == "bf16-mixed":
        return MixedPrecision(name, torch.bfloat16, device_type)
    if name == "fp16-mixed":
        return MixedPrecision(name, torch.float16, device_type)
    raise PrecisionError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}")


TF32_CPU_REASON = (
    "tf32 is a CUDA tensor-core mode for fp32 matmuls and convolutions; CPU fp32 arithmetic has no TF32 setting"
)


def set_tf32(enabled: bool, device_type: str) -> dict[str, bool]:
    """Switch TF32 for fp32 matmuls (cuBLAS) and convolutions (cuDNN) on or off, explicitly both ways.

    Off must be said too: torch's default leaves cuDNN's TF32 *on* while cuBLAS's is off. The
    legacy ``allow_tf32`` flags are used because they exist in every torch this harness runs
    (2.11 on the GPU machines, 2.14 here). Returns the flags as set, for the result.
    """
    if enabled and device_type != "cuda":
        raise PrecisionError(TF32_CPU_REASON)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return tf32_flags()


def tf32_flags() -> dict[str, bool]:
    """The TF32 flags as they are now (a library may change them during fit)."""
    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}
