"""Names → tasks and adapters. Built-ins are listed here; third parties add entry points.

Entries are ``"module:Class"`` strings imported on first use, so listing names costs nothing
and an adapter whose library is missing shows up as unavailable with the import error
instead of breaking every other command. Third-party packages register under the entry-point
groups ``bakeoff.tasks`` and ``bakeoff.adapters``.

Versioned names (a version matrix): ``lightning@2.1.4`` is the ``lightning`` adapter —
the same class, task, sampler, initial weights and probe — run in an isolated environment whose
requirements pin its library (``lightning==2.1.4``, harness.envs builds it). The registry makes
a subclass per version with ``name = "lightning@2.1.4"`` and an ``environment`` of the same name,
and whose ``fit`` first checks that the worker really imported that version
(:func:`imported_library`): a mismatch fails the run instead of labelling it with the wrong
version. Only adapters with a ``library`` take a version.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from adapters.base import Adapter
from harness.spec import SpecError, split_adapter
from tasks.base import Task

BUILTIN_TASKS = {
    "digits": "tasks.digits:Digits",
    "tabular": "tasks.tabular:Tabular",
    "charlm": "tasks.charlm:CharLM",
    "scaling": "tasks.scaling:Scaling",
    "families": "tasks.families:Families",
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


class LibraryVersionMismatch(RuntimeError):
    """A versioned adapter's worker imported another version of its library than the name asks for."""


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
    """The adapter class, or the reason it cannot be imported (a string).

    A versioned name (``lightning@2.1.4``) gives the variant class; a malformed one, an unknown
    base name or a base adapter without a library raises :class:`RegistryError`.
    """
    base, version = _split(name)
    if version is not None:
        if base not in adapter_table():
            raise RegistryError(f"unknown adapter {base!r} in {name!r}; choose one of: {', '.join(adapter_names())}")
        loaded = _load_adapter_class(base)
        if isinstance(loaded, str):
            return loaded
        return _variant_class(loaded, base, version)
    try:
        return _load(adapter_table()[name])
    except ImportError as error:
        return f"{type(error).__name__}: {error}"


def _split(name: str) -> tuple[str, str | None]:
    try:
        return split_adapter(name)
    except SpecError as error:
        raise RegistryError(str(error)) from None


@cache
def _variant_class(base_class: type[Adapter], base: str, version: str) -> type[Adapter]:
    """``base_class`` at ``version`` of its library: same code, its own environment, a checked import."""
    if not base_class.library:
        raise RegistryError(
            f"adapter {base!r} has no library to pin, so '{base}@{version}' means nothing; "
            "a version applies to adapters whose library is a pip distribution (bakeoff list)"
        )

    def fit(self, job):
        # Before any training: the run must be the version its name (and spec id) says.
        job.notes["library_variant"] = imported_library(self.library, version)
        return base_class.fit(self, job)

    return type(
        f"{base_class.__name__}[{version}]",
        (base_class,),
        {
            "__module__": base_class.__module__,
            "__doc__": f"{base_class.__name__} run with {base_class.library}=={version} (a versioned adapter name).",
            "name": f"{base}@{version}",
            "environment": f"{base}@{version}",
            "variant_of": base,
            "base_environment": base_class.environment,
            "requested_version": version,
            "fit": fit,
        },
    )


def variant_info(name: str) -> dict[str, Any] | None:
    """For a versioned name, what its environment is made from; None for a plain name.

    ``{"adapter", "base", "version", "library", "base_environment", "variant_requirements"}``;
    raises RegistryError for a malformed, unknown or library-less variant, or an unimportable base.
    """
    base, version = _split(name)
    if version is None:
        return None
    loaded = _load_adapter_class(name)
    if isinstance(loaded, str):
        raise RegistryError(f"adapter {base!r} is not available here ({loaded})")
    return {
        "adapter": name,
        "base": base,
        "version": version,
        "library": loaded.library,
        "base_environment": loaded.base_environment,
        "variant_requirements": dict(loaded.variant_requirements),
    }


def _versions_equal(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        from packaging.version import Version

        return Version(a) == Version(b)
    except Exception:  # an unparsable version string compares as text
        return a == b


def _top_level_modules(distribution: importlib.metadata.Distribution) -> list[str]:
    text = distribution.read_text("top_level.txt")
    if text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    names = set()
    for file in distribution.files or []:
        parts = file.parts
        if len(parts) == 1 and parts[0].endswith(".py"):
            names.add(parts[0][:-3])
        elif len(parts) > 1 and parts[-1] == "__init__.py" and not parts[0].endswith((".dist-info", ".data")):
            names.add(parts[0])
    return sorted(names)


def imported_library(library: str, requested: str) -> dict[str, Any]:
    """What this interpreter imports for ``library``; raises LibraryVersionMismatch unless it is ``requested``.

    Checks the distribution metadata found first on ``sys.path`` (what the result's
    ``adapter.library_version`` records), the imported module's ``__version__`` and that the
    module's file lies in that distribution's folder (no other copy shadowing it).
    """
    record: dict[str, Any] = {"library": library, "requested": requested}
    try:
        distribution = importlib.metadata.distribution(library)
    except importlib.metadata.PackageNotFoundError:
        raise LibraryVersionMismatch(
            f"{library}=={requested} requested but {library} is not installed for this interpreter"
        ) from None
    location = Path(str(distribution.locate_file(""))).resolve()
    record.update(distribution_version=distribution.version, distribution_path=str(location))
    problems = []
    if not _versions_equal(distribution.version, requested):
        problems.append(f"its metadata says {distribution.version} ({location})")
    for module_name in _top_level_modules(distribution)[:3]:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as error:  # the adapter will fail on it anyway; say so here
            problems.append(f"import {module_name} failed: {type(error).__name__}: {error}")
            continue
        module_file = getattr(module, "__file__", None)
        module_version = getattr(module, "__version__", None)
        record.setdefault("modules", {})[module_name] = {"version": module_version, "file": module_file}
        if isinstance(module_version, str) and not _versions_equal(module_version, requested):
            problems.append(f"{module_name}.__version__ is {module_version}")
        if module_file and not Path(module_file).resolve().is_relative_to(location):
            problems.append(f"{module_name} was imported from {module_file}, outside {location}")
    if problems:
        raise LibraryVersionMismatch(
            f"asked for {library}=={requested} but this worker ({sys.executable}) has "
            + "; ".join(problems)
            + " — refusing to run under a mislabelled version"
        )
    return record


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
    """The adapter for ``name``; ``<adapter>@<version>`` gives that adapter pinned to a library version."""
    table = adapter_table()
    base, _ = _split(name)
    if base not in table:
        raise RegistryError(f"unknown adapter {base!r}; choose one of: {', '.join(sorted(table))}")
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
