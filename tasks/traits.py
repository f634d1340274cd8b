"""What a model does that a training library may handle differently: detected from the model itself.

An adapter's declared parity can depend on the model family (Lightning 2.6 re-casts a weight at
every use under bf16 autocast, so a recurrent cell applied over time trains with other rounding
than the native loop, which casts it once). Tasks declare their traits (``Task.traits``); the
worker also *detects* them on the built model with one small forward pass, so a plugin task that
declares nothing still gets the declaration its model calls for, and a built-in task's
declaration is checked against its model by the tests.

Detection never changes the run: it works under a forked RNG, in eval mode for the autocast pass
(no BatchNorm statistics move, no dropout mask is drawn), with buffers copied back after the
train-mode pass, and it never calls backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

TRAITS: dict[str, str] = {
    "weight-reuse": "a parameter feeds two or more autocast-lowered ops in one forward pass (e.g. a recurrent cell)",
    "tied-weights": "one parameter registered under two names (e.g. the embedding is the output projection)",
    "padding-embedding": "an nn.Embedding with a padding_idx (that row gets no gradient)",
    "batchnorm": "BatchNorm layers (batch statistics in training, running-statistics buffers)",
    "rng-in-forward": "a training forward pass draws random numbers (dropout)",
    "fused-rnn": "a fused recurrent module (nn.LSTM / nn.GRU / nn.RNN)",
    "loss-precision-sensitive": (
        "the loss of the model's low-precision output differs from the loss of the same output upcast to fp32 "
        "(the loss itself has ops autocast runs in low precision)"
    ),
}
"""The vocabulary: trait name → what it means."""

AUTOCAST_TRAITS = ("weight-reuse", "loss-precision-sensitive")
"""Traits that need an autocast forward pass to detect."""


def structural_traits(model: nn.Module) -> set[str]:
    """The traits visible in the module tree alone."""
    found: set[str] = set()
    names_per_parameter: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        names_per_parameter[id(parameter)] = names_per_parameter.get(id(parameter), 0) + 1
    if any(count > 1 for count in names_per_parameter.values()):
        found.add("tied-weights")
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            found.add("padding-embedding")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            found.add("batchnorm")
        if isinstance(module, nn.RNNBase):
            found.add("fused-rnn")
    return found


def _consumers(root: torch.Tensor) -> dict[Any, int]:
    """How many graph edges point at each autograd node reachable from ``root``."""
    counts: dict[Any, int] = {}
    seen: set[Any] = set()
    stack = [root.grad_fn] if root.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] = counts.get(child, 0) + 1
                stack.append(child)
    return counts


def reused_under_autocast(loss: torch.Tensor) -> bool:
    """Whether one cached autocast cast of a parameter feeds two or more ops (the parameter is reused)."""
    for node, count in _consumers(loss).items():
        if count < 2 or type(node).__name__ != "ToCopyBackward0":
            continue
        if any(type(child).__name__ == "AccumulateGrad" for child, _ in node.next_functions if child is not None):
            return True
    return False


def _low_precision_dtype(device_type: str) -> torch.dtype:
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _bitwise_equal(*values: torch.Tensor) -> bool:
    first = values[0].detach().double()
    return all(torch.equal(first, value.detach().double()) for value in values[1:])


def detect_traits(
    model: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
) -> dict[str, Any]:
    """``{"traits": sorted names, "undetermined": {name: why}}`` for ``model`` on one small batch.

    ``inputs``/``targets`` are a few training samples (at least 2, for BatchNorm in train mode)
    already on ``device``.
    """
    found = structural_traits(model)
    undetermined: dict[str, str] = {}
    modes = [(module, module.training) for module in model.modules()]
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    cuda = device.type == "cuda"
    try:
        with torch.random.fork_rng(devices=[device] if cuda else []):
            model.train()
            before = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
            with torch.no_grad():
                model(inputs)
            after = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
            if not torch.equal(before, after):
                found.add("rng-in-forward")
            model.eval()
            try:
                with torch.autocast(device.type, dtype=_low_precision_dtype(device.type), cache_enabled=True):
                    output = model(inputs)  # with grad: its graph shows a cached cast feeding several ops
                    # The losses only as values, without grad: a loss that counts its training calls (or
                    # does anything else per call) must not count these.
                    with torch.no_grad():
                        inside = loss(output, targets)
                        inside_upcast = loss(output.float(), targets)
                with torch.no_grad():
                    outside_upcast = loss(output.float(), targets)
            except Exception as error:  # e.g. an op with no low-precision kernel on this device
                reason = f"the autocast forward pass failed: {type(error).__name__}: {str(error).splitlines()[0]}"
                undetermined.update({name: reason[:300] for name in AUTOCAST_TRAITS})
            else:
                if reused_under_autocast(output):
                    found.add("weight-reuse")
                if not _bitwise_equal(inside, inside_upcast, outside_upcast):
                    found.add("loss-precision-sensitive")
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for module, training in modes:
            module.training = training
    return {"traits": sorted(found), "undetermined": undetermined}
