"""Checks a spec against this machine and the registry before anything is launched.

Bad input (unknown names, options, a device or world size the machine cannot run) raises a
SpecError with one line for the user; a library that cannot do a valid spec is not bad input
and is reported as an ``unsupported`` result instead.
"""

from __future__ import annotations

import os

from adapters.base import Request
from harness.registry import RegistryError, adapter_entry, adapter_table, get_adapter, get_task
from harness.spec import Spec, SpecError
from kernels.precision import TF32_CPU_REASON, PrecisionError, make_precision
from tasks.base import Task


def request_for(spec: Spec, task: Task | None = None, traits: frozenset[str] | None = None) -> Request:
    """The adapter-side view of a spec: what ``Adapter.check`` and ``expected_parity`` judge.

    ``traits`` defaults to what the task declares for the spec's options; the worker passes the
    declared ones plus those it detected on the built model.
    """
    task = task if task is not None else get_task(spec.task)
    if traits is None:
        try:
            traits = frozenset(task.traits(task.resolve_options(spec.options)))
        except ValueError:  # bad options: check_spec reports them; the request carries no traits
            traits = frozenset()
    return Request(
        task=task,
        mode=spec.mode,
        precision=spec.precision,
        world_size=spec.world_size,
        grad_accum=spec.grad_accum,
        device_type=spec.device,
        options=dict(spec.options),
        traits=traits,
        compile=spec.compile,
        ddp=spec.ddp,
    )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def best_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def check_spec(spec: Spec) -> None:
    """Raise SpecError when the spec cannot run on this machine with this registry."""
    try:
        task = get_task(spec.task)
        # An unknown name is bad input; a registered adapter that cannot load here becomes an
        # `unsupported` result (unsupported_reason), so one missing library never stops a suite.
        # A versioned name or an import path must load (a malformed variant, a broken plugin).
        if spec.adapter not in adapter_table():
            adapter_entry(spec.adapter)
            get_adapter(spec.adapter)
    except RegistryError as error:
        raise SpecError(str(error)) from None
    try:
        task.resolve_options(spec.options)
    except ValueError as error:
        raise SpecError(str(error)) from None
    if spec.device == "cuda" and not cuda_available():
        raise SpecError("device cuda requested but no CUDA device is available")
    try:
        make_precision(spec.precision, spec.device)
    except PrecisionError as error:
        raise SpecError(str(error)) from None
    cores = os.cpu_count() or 1
    if spec.device == "cpu" and spec.world_size > cores:
        raise SpecError(f"world size {spec.world_size} needs {spec.world_size} CPU cores; this machine has {cores}")


def unsupported_reason(spec: Spec) -> str | None:
    """Why the adapter cannot run this (valid) spec here, or None."""
    if spec.tf32 and spec.device != "cuda":
        return TF32_CPU_REASON
    try:
        adapter = get_adapter(spec.adapter)
    except RegistryError as error:
        return str(error)
    return adapter.check(request_for(spec))
