"""bakeoff's public API for plugin authors: ``from bakeoff import Task, Adapter, ...``.

Everything a task or an adapter needs is importable from here, so a plugin never imports
bakeoff's internal top-level packages (``tasks``, ``adapters``, ``kernels``), whose generic names
could clash with a user's own. Names are resolved on first use (importing ``bakeoff`` itself is
cheap and does not import torch); the objects are the same ones the harness uses.

- tasks: :class:`Task`, :class:`TaskDefaults`, :class:`OptimizerRecipe`, :class:`Tolerance`,
  :class:`Inferable`, :class:`TaskData`, :func:`tensor_data`, :func:`tensors_digest`,
  :func:`seeded_init`, :func:`fixed_split`, :func:`cross_entropy`, :func:`accuracy`,
  ``STANDARD_TOLERANCES``, ``STANDARD_DRIFT``;
- adapters: :class:`Adapter`, :class:`Request`, :class:`Job`, :class:`Probe` (the protocol),
  :class:`Unsupported`, ``STYLES``, ``MODES``, and the shared execution helpers
  :func:`wrap_ddp`, :func:`endless`;
- your own loop: write ``def train(model, loader, optimizer, loss_fn, steps, probe)`` and name it
  where an adapter goes (``--adapter mypkg.train:train``), see ``adapters.loop``;
- runs and verdicts from Python: :class:`Spec`, :func:`get_task`, :func:`get_adapter`;
  CI assertions live in :mod:`bakeoff.testing` (and the pytest plugin ``bakeoff.pytest_plugin``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # the task contract
    "Task": "tasks.base",
    "TaskDefaults": "tasks.base",
    "OptimizerRecipe": "tasks.base",
    "Tolerance": "tasks.base",
    "Inferable": "tasks.base",
    "TaskData": "tasks.base",
    "tensor_data": "tasks.base",
    "tensors_digest": "tasks.base",
    "seeded_init": "tasks.base",
    "fixed_split": "tasks.base",
    "cross_entropy": "tasks.base",
    "accuracy": "tasks.base",
    "STANDARD_TOLERANCES": "tasks.tolerances",
    "STANDARD_DRIFT": "tasks.tolerances",
    # the adapter contract
    "Adapter": "adapters.base",
    "Request": "adapters.base",
    "Job": "adapters.base",
    "Probe": "adapters.base",
    "Unsupported": "adapters.base",
    "STYLES": "adapters.base",
    "MODES": "adapters.base",
    "wrap_ddp": "kernels.distributed",
    "endless": "kernels.sampling",
    # runs
    "Spec": "harness.spec",
    "SpecError": "harness.spec",
    "get_task": "harness.registry",
    "get_adapter": "harness.registry",
}

__all__ = [  # the names of _EXPORTS (a test keeps the two equal)
    "MODES",
    "STANDARD_DRIFT",
    "STANDARD_TOLERANCES",
    "STYLES",
    "Adapter",
    "Inferable",
    "Job",
    "OptimizerRecipe",
    "Probe",
    "Request",
    "Spec",
    "SpecError",
    "Task",
    "TaskData",
    "TaskDefaults",
    "Tolerance",
    "Unsupported",
    "accuracy",
    "cross_entropy",
    "endless",
    "fixed_split",
    "get_adapter",
    "get_task",
    "seeded_init",
    "tensor_data",
    "tensors_digest",
    "wrap_ddp",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bakeoff' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from adapters.base import MODES, STYLES, Adapter, Job, Probe, Request, Unsupported
    from harness.registry import get_adapter, get_task
    from harness.spec import Spec, SpecError
    from kernels.distributed import wrap_ddp
    from kernels.sampling import endless
    from tasks.base import (
        Inferable,
        OptimizerRecipe,
        Task,
        TaskData,
        TaskDefaults,
        Tolerance,
        accuracy,
        cross_entropy,
        fixed_split,
        seeded_init,
        tensor_data,
        tensors_digest,
    )
    from tasks.tolerances import STANDARD_DRIFT, STANDARD_TOLERANCES
