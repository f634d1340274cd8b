"""Host syncs per step: the operations that make the host wait for a device value, with call sites.

On CUDA the host stalls whenever it reads a value the device computes: ``Tensor.item()``,
``bool(tensor)`` (an ``if`` on a tensor), ``float()``/``int()``, ``.tolist()``, ``.numpy()``,
``.cpu()`` / ``.to("cpu")``, printing a tensor, and ops whose output size depends on the data
(``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``). On a CPU machine none of these
waits for anything, so bakeoff *predicts* them: it runs the adapter's steady-state steps with an
interposer and counts the reads that would be device→host on a GPU.

Mechanism. Two torch modes, active for the whole fit, counting only inside the steady-state window:

- a ``TorchDispatchMode`` follows **where each tensor would live**: the model's parameters and
  buffers are device-resident, so is every output of an op with a device-resident input (which
  covers activations, the loss, gradients and optimizer state), and every tensor a factory call
  places with an explicit ``device=`` (``torch.tensor(0.0, device=self.device)``); tensors created
  without a device (the sampler's indices, a dataset) are host tensors, as they would be on a GPU.
  It also counts the data-dependent ops on device tensors that no Python call shows (a boolean
  mask indexing inside compiled code; ``aten._local_scalar_dense`` reached from C++);
- a ``TorchFunctionMode`` sees the Python-level calls and counts each read of a device-resident
  tensor once, under the name the code used (a printed tensor is one ``print``, not the many
  scalar reads formatting makes inside torch).

The one ambiguity of a CPU run: ``x.to(device)`` where the device *is* the CPU could be a move to
the training device (no sync on a GPU) or a read back to the host. A ``.to`` counts as a host read
only when its call site names the host literally (``.to("cpu")``, ``device="cpu"``); otherwise it is
a move to the device and its result becomes device-resident. ``.cpu()`` always means the host: it
counts, and it hands back a host copy, as it would on a GPU, so reading that copy later does not
count again.

The call site of each read is the first frame outside torch and outside this module, as a path
inside its package (never the machine's own path), with the next frames up for context.
"""

from __future__ import annotations

import contextlib
import linecache
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from harness.cost.analysis import site_path

_MARK = "_bakeoff_on_device"

READ_METHODS = {
    "item": "item",
    "__bool__": "bool",
    "__float__": "float",
    "__int__": "int",
    "__index__": "index",
    "tolist": "tolist",
    "numpy": "numpy",
    "__repr__": "print",
    "__str__": "print",
    "__format__": "print",
    "nonzero": "nonzero",
    "argwhere": "nonzero",
    "masked_select": "masked_select",
    "unique": "unique",
    "unique_consecutive": "unique",
    "equal": "equal",
    "allclose": "allclose",
    "cpu": "cpu",
}
"""Python-level calls that read a device value on the host, and the name a report gives each."""

FACTORIES = {
    "tensor",
    "as_tensor",
    "zeros",
    "ones",
    "full",
    "empty",
    "arange",
    "range",
    "linspace",
    "logspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "scalar_tensor",
    "empty_strided",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "rand_like",
    "randn_like",
    "randint_like",
}
"""Factory functions: their output is device-resident when the call names a device."""

HOST_LITERAL = re.compile(r"""(["'])cpu\1""")
CONTEXT_FRAMES = 3


def _aten_reads() -> dict[object, str]:
    aten = torch.ops.aten
    table: dict[object, str] = {aten._local_scalar_dense.default: "item (C++)", aten.is_nonzero.default: "bool (C++)"}
    for packet, name in (
        (aten.nonzero, "nonzero"),
        (aten.masked_select, "masked_select"),
        (aten.equal, "equal"),
        (aten._unique, "unique"),
        (aten._unique2, "unique"),
        (aten.unique_dim, "unique"),
        (aten.unique_consecutive, "unique"),
    ):
        for overload in packet.overloads():
            table[getattr(packet, overload)] = name
    return table


def on_device(value: object) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, _MARK, False)


def mark(values: Iterable[object]) -> None:
    for value in values:
        if isinstance(value, torch.Tensor) and not getattr(value, _MARK, False):
            with contextlib.suppress(AttributeError, RuntimeError):  # a tensor subclass without a __dict__
                setattr(value, _MARK, True)


def _unmark(value: torch.Tensor) -> None:
    if _MARK in getattr(value, "__dict__", {}):
        delattr(value, _MARK)


@dataclass(frozen=True)
class SyncEvent:
    kind: str
    stack: tuple[str, ...]
    """The call site first, then the frames above it (outside torch), as package paths."""


def call_stack(skip_files: tuple[str, ...]) -> tuple[str, ...]:
    """The first frames outside torch and outside ``skip_files``, innermost first."""
    frame = sys._getframe(2)
    frames: list[str] = []
    while frame is not None and len(frames) < CONTEXT_FRAMES + 1:
        filename = frame.f_code.co_filename
        path = site_path(filename)
        if not (path.startswith("torch/") or filename.endswith(skip_files)):
            frames.append(f"{path}:{frame.f_lineno}({frame.f_code.co_name})")
        frame = frame.f_back
    return tuple(frames) or ("<unknown>",)


def _caller_line() -> str:
    """The source line of the first frame outside torch and this module (for the ``.to`` rule)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not (site_path(filename).startswith("torch/") or filename == __file__):
            return linecache.getline(filename, frame.f_lineno)
        frame = frame.f_back
    return ""


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        name = getattr(func, "__name__", None)
        subject = args[0] if args else None
        if name in READ_METHODS and on_device(subject):
            counter.record(READ_METHODS[name])
            counter.inside += 1
            try:
                result = func(*args, **kwargs)
            finally:
                counter.inside -= 1
            if name == "cpu" and isinstance(result, torch.Tensor):
                result = self._host_copy(result)
            return result
        if name == "to" and isinstance(subject, torch.Tensor):
            return self._to(func, subject, args, kwargs)
        result = func(*args, **kwargs)
        if name in FACTORIES and kwargs.get("device") is not None:
            mark(tree_flatten(result)[0])
        return result

    def _to(self, func, subject: torch.Tensor, args, kwargs):
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        if device is None or device.type != "cpu":  # a dtype change, or a real device here
            return func(*args, **kwargs)
        if HOST_LITERAL.search(_caller_line()):  # `.to("cpu")`: a read back to the host
            if not on_device(subject):
                return func(*args, **kwargs)
            self.counter.record("to(cpu)")
            self.counter.inside += 1
            try:
                result = func(*args, **kwargs)
            finally:
                self.counter.inside -= 1
            return self._host_copy(result)
        result = func(*args, **kwargs)  # a move to the training device
        mark([result])
        return result

    @staticmethod
    def _host_copy(result: torch.Tensor) -> torch.Tensor:
        """What a GPU hands back: a new host tensor (on the CPU the call returns the same object)."""
        with torch._C.DisableTorchFunction():
            copy = result.detach().clone() if not result.requires_grad else result.clone()
        _unmark(copy)
        return copy


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter
        self.reads = _aten_reads()
        self.copy_ = torch.ops.aten.copy_.default
        self.index = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        inputs = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
        device_input = any(getattr(value, _MARK, False) for value in inputs)
        if device_input and counter.counting and not counter.inside:
            kind = self.reads.get(func)
            if kind is None and func in self.index and self._boolean_index(args):
                kind = "boolean-mask index"
            if kind is None and func is self.copy_ and not on_device(args[0]) and on_device(args[1]):
                kind = "copy_ to host"
            if kind is not None:
                counter.record(kind)
        result = func(*args, **kwargs)
        if device_input and func is not self.copy_:
            mark(tree_flatten(result)[0])
        return result

    @staticmethod
    def _boolean_index(args) -> bool:
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCounter:
    """Counts predicted host syncs while ``counting`` is on; use as a context around the whole fit.

    ``SyncCounter(model)`` marks the model's parameters and buffers device-resident; the modes
    then follow every tensor derived from them. ``start()``/``stop()`` open and close the window
    (the cost probe's hooks call them).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.counting = False
        self.inside = 0
        self.events: list[SyncEvent] = []
        mark(model.parameters())
        mark(model.buffers())
        self._modes = (_DispatchLevel(self), _FunctionLevel(self))

    def start(self) -> None:
        self.counting = True

    def stop(self) -> None:
        self.counting = False

    def record(self, kind: str) -> None:
        if self.counting:
            self.events.append(SyncEvent(kind, call_stack((__file__,))))

    def __enter__(self) -> SyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def summary(self, steps: int) -> dict:
        return sync_summary(self.events, steps)


def sync_summary(events: list[SyncEvent], steps: int) -> dict:
    """Syncs per step, in total and per (kind, call site), most frequent first."""
    by_site = Counter((event.kind, event.stack) for event in events)
    sites = [
        {"kind": kind, "site": stack[0], "via": list(stack[1:]), "count": count, "per_step": count / steps}
        for (kind, stack), count in sorted(by_site.items(), key=lambda item: (-item[1], item[0]))
    ]
    by_kind = Counter(event.kind for event in events)
    return {
        "steps": steps,
        "total": len(events),
        "per_step": len(events) / steps,
        "by_kind": {kind: count / steps for kind, count in sorted(by_kind.items())},
        "sites": sites,
    }
