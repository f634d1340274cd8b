"""Your own training loop as an adapter: the harness calls a training function you already have.

Name it by import path where an adapter goes (``bakeoff run --adapter mypkg.train:train``) or
register it under the ``bakeoff.adapters`` entry-point group. It is called as::

    def train(model, loader, optimizer, loss_fn, steps, probe): ...

- ``model``: the task's initialized module, on its device (wrapped in ``DistributedDataParallel``
  when the world size is above 1);
- ``loader``: the harness's ``DataLoader``: this rank's batches in the harness order, one pass per
  epoch (loop over it again for the next epoch; batches arrive on the CPU);
- ``optimizer``: the task's optimizer over ``model.parameters()`` with the spec's learning rate;
- ``loss_fn``: the task's loss, ``loss_fn(output, target)``;
- ``steps``: how many optimizer steps to run;
- ``probe``: call ``probe.step_end(loss)`` once after each optimizer step with that step's loss
  (with accumulation: ``probe.add_loss(loss)`` per micro-batch, then ``probe.step_end()``).

Keyword parameters the function may declare, passed only when it does: ``precision`` (the
harness precision object: ``forward_context()``, ``backward(loss)``, ``optimizer_step(optimizer)``),
``grad_accum`` (micro-batches per optimizer step) and ``device``. A function without
``precision`` is refused for mixed precision, and one without ``grad_accum`` for accumulation,
rather than run in fp32 or unaccumulated under a label that says otherwise. It returns the
trained model, or None when it trained ``model`` in place.

The declared verdict against native is ``bitwise``: a plain loop doing the native loop's math
reproduces it bit for bit, which is the question this adapter answers. A function may declare
otherwise with an ``expected_parity`` attribute (a verdict name, or a function of the request).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch.nn.parallel import DistributedDataParallel

from adapters.base import Adapter, Job, Request
from kernels.distributed import wrap_ddp

POSITIONAL = ("model", "loader", "optimizer", "loss_fn", "steps", "probe")
OPTIONAL = ("precision", "grad_accum", "device")


class LoopError(TypeError):
    """A training function whose signature the loop adapter cannot call."""


def accepted_keywords(function: Callable) -> frozenset[str]:
    """Which of the optional keywords ``function`` takes; LoopError when it cannot take the six arguments."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as error:
        raise LoopError(f"cannot read the signature of {function!r}: {error}") from None
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        keywords = frozenset(OPTIONAL)
    else:
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        keywords = frozenset(name for name in OPTIONAL if name in parameters and parameters[name].kind in keyword_kinds)
    try:  # the call fit() makes: the six arguments by position, the declared keywords by name
        signature.bind(*POSITIONAL, **dict.fromkeys(keywords))
    except TypeError as error:
        raise LoopError(
            f"a training function must take ({', '.join(POSITIONAL)}); {_name(function)}{signature} cannot ({error})"
        ) from None
    return keywords


def _name(function: Callable) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


class LoopAdapter(Adapter):
    """Base of the per-function adapters :func:`loop_adapter` makes."""

    name = "loop"
    style = "native"
    library = None
    modes = ("aligned",)  # a user's own loop has no library defaults to measure
    train_function: Callable[..., Any]
    keywords: frozenset[str] = frozenset()

    def refuse(self, request: Request) -> str | None:
        function = _name(self.train_function)
        if request.precision != "fp32" and "precision" not in self.keywords:
            return (
                f"{function}() takes no 'precision' argument, so it cannot run {request.precision} "
                "(declare a precision parameter and use its forward_context/backward/optimizer_step)"
            )
        if request.grad_accum > 1 and "grad_accum" not in self.keywords:
            return (
                f"{function}() takes no 'grad_accum' argument, so it cannot accumulate "
                f"{request.grad_accum} micro-batches per step"
            )
        return None

    def expected_parity(self, request: Request) -> str:
        declared = getattr(self.train_function, "expected_parity", None)
        if callable(declared):
            return declared(request)
        if isinstance(declared, str):
            return declared
        return "bitwise" if request.mode == "aligned" else "not-comparable"

    def fit(self, job: Job):
        model = job.model
        train_model = wrap_ddp(model, job.dist)
        optimizer = job.make_optimizer(model.parameters())
        extra = {"precision": job.precision, "grad_accum": job.grad_accum, "device": job.device}
        model.train()
        returned = self.train_function(
            train_model,
            job.train_loader,
            optimizer,
            job.loss,
            job.steps,
            job.probe,
            **{key: value for key, value in extra.items() if key in self.keywords},
        )
        job.notes["train_function"] = f"{self.train_function.__module__}:{_name(self.train_function)}"
        job.notes["passed"] = sorted(self.keywords)
        job.notes["precision_impl"] = (
            f"the function's own use of the harness precision ({job.precision.name})"
            if "precision" in self.keywords and job.precision.autocast_dtype
            else "fp32"
        )
        if returned is None or returned is train_model:
            return model
        return returned.module if isinstance(returned, DistributedDataParallel) else returned


def loop_adapter(function: Callable[..., Any], *, name: str) -> type[LoopAdapter]:
    """An adapter class that trains with ``function``; LoopError when its signature does not fit."""
    keywords = accepted_keywords(function)
    return type(
        f"LoopAdapter[{name}]",
        (LoopAdapter,),
        {
            "__module__": LoopAdapter.__module__,
            "__doc__": f"The training function {name} as an adapter.",
            "name": name,
            "train_function": staticmethod(function),
            "keywords": keywords,
        },
    )
