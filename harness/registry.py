"""Names → tasks and adapters. Built-ins are listed here; third parties add entry points.

Entries are ``"module:Class"`` strings imported on first use, so listing names costs nothing
and an adapter whose library is missing shows up as unavailable with the import error
instead of breaking every other command. Third-party packages register under the entry-point
groups ``bakeoff.tasks`` and ``bakeoff.adapters``.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from adapters.base import Adapter
from tasks.base import Task

BUILTIN_TASKS = {
    "digits": "tasks.digits:Digits",
    "tabular": "tasks.tabular:Tabular",
    "charlm": "tasks.charlm:CharLM",
    "scaling": "tasks.scaling:Scaling",
    "mnist": "tasks.vision:MNIST",
    "cifar10": "tasks.vision:CIFAR10",
}

BUILTIN_ADAPTERS = {
    "native": "adapters.native:NativeAdapter",
    "lightning": "adapters.lightning:LightningAdapter",
    "fastai": "adapters.fastai:FastaiAdapter",
    "keras": "adapters.keras:KerasAdapter",
    "hf": "adapters.hf_trainer:HFTrainerAdapter",
    "flash": "adapters.flash:FlashAdapter",
}


class RegistryError(ValueError):
    """An unknown or unavailable name; the message lists the valid ones."""


def _with_entry_points(builtins: dict[str, str], group: str) -> dict[str, str]:
    table = dict(builtins)
    for entry in entry_points(group=group):
        table.setdefault(entry.name, entry.value)
    return table


@cache
def task_table() -> dict[str, str]:
    return _with_entry_points(BUILTIN_TASKS, "bakeoff.tasks")


@cache
def adapter_table() -> dict[str, str]:
    return _with_entry_points(BUILTIN_ADAPTERS, "bakeoff.adapters")


def _load(target: str):
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@cache
def _load_adapter_class(name: str) -> type[Adapter] | str:
    """The adapter class, or the reason it cannot be imported (a string)."""
    try:
        return _load(adapter_table()[name])
    except ImportError as error:
        return f"{type(error).__name__}: {error}"


def task_names() -> list[str]:
    return sorted(task_table())


def adapter_names() -> list[str]:
    return sorted(adapter_table())


def get_task(name: str) -> Task:
    table = task_table()
    if name not in table:
        raise RegistryError(f"unknown task {name!r}; choose one of: {', '.join(sorted(table))}")
    return _load(table[name])()


def get_adapter(name: str) -> Adapter:
    table = adapter_table()
    if name not in table:
        raise RegistryError(f"unknown adapter {name!r}; choose one of: {', '.join(sorted(table))}")
    loaded = _load_adapter_class(name)
    if isinstance(loaded, str):
        raise RegistryError(f"adapter {name!r} is not available here ({loaded})")
    return loaded()


def adapter_availability() -> dict[str, str | None]:
    """Adapter name → None when importable, else the reason."""
    return {
        name: (None if not isinstance(_load_adapter_class(name), str) else _load_adapter_class(name))
        for name in adapter_names()
    }
