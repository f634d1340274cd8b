"""Tasks that misbehave on purpose, for tests: registered under ``bakeoff.tasks`` by the dist-info beside this file.

``overflow-scaling`` is the scaling task whose loss is multiplied by ``OVERFLOW_FACTOR`` on one
training micro-batch (``PLANTED_CALL``, 0-based). The loss stays finite in fp32 (~2e4), but its
gradient overflows fp16: with GradScaler's initial scale 2**16 the gradient reaching the fp16
logits is ~1e4 * 65536 / batch, far above fp16's largest finite value (65504). A GradScaler
must skip exactly that one optimizer step (and halve its scale); fp32 and bf16 have no scaler
and skip nothing.
"""

from __future__ import annotations

import torch

from tasks.base import cross_entropy
from tasks.scaling import Scaling

PLANTED_CALL = 2
OVERFLOW_FACTOR = 1e4
_calls = {"training": 0}


def planted_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = cross_entropy(output, target)
    if output.device.type == "meta" or not (torch.is_grad_enabled() and output.requires_grad):
        return loss  # evaluation and FLOP counting are not training calls
    call = _calls["training"]
    _calls["training"] += 1
    return loss * OVERFLOW_FACTOR if call == PLANTED_CALL else loss


class OverflowScaling(Scaling):
    name = "overflow-scaling"
    description = "scaling with one training loss scaled to overflow fp16 gradients (tests only)"
    loss = staticmethod(planted_loss)

    def build_model(self, seed, options, data):
        _calls["training"] = 0  # every run counts its own training calls from zero
        return super().build_model(seed, options, data)
