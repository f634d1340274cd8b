"""Names → tasks and adapters: built-ins, installed plugins' entry points, and import paths.

A task or an adapter is named one of three ways:

- a built-in name (``digits``, ``lightning``), listed below;
- an entry point of an installed distribution, in the group ``bakeoff.tasks`` or
  ``bakeoff.adapters`` (``my-task = "mypkg.tasks:MyTask"`` in its ``pyproject.toml``);
- an import path, ``package.module:Name``. ``Name`` is a :class:`tasks.base.Task` subclass, an
  :class:`adapters.base.Adapter` subclass, or, for an adapter, a training function
  ``train(model, loader, optimizer, loss_fn, steps, probe)`` (``adapters.loop``). Import paths
  resolve on ``sys.path`` plus the folders in ``BAKEOFF_PLUGIN_PATH`` (the CLI puts the
  current directory there, after everything else, so a folder of the user's cannot shadow
  bakeoff's own ``tasks`` or ``adapters`` packages).

Loading imports the target on first use and checks it against the contract (a Task subclass
with a no-argument constructor, ``defaults``, ``optimizer``, ``tolerances`` and both builders;
an Adapter subclass with ``name``, ``style`` and ``fit``). Whatever is wrong with it (it does not
import, a typo inside it, a missing attribute, a constructor that needs arguments) is a
:class:`PluginError`: one line naming the task or adapter, where it came from and what is wrong.

Listing (``bakeoff list``) imports nothing: names come from these tables and from installed
distributions' entry-point metadata, the descriptions of built-ins from their source files (read,
not run: :func:`static_attributes`), and an adapter's availability from whether its library's
distribution is installed. ``bakeoff list --check`` imports everything and reports what is broken.

A plugin's code is identified by ``harness.plugins`` (distribution, version, source digest), so
a spec that uses it changes id when the plugin's code does.

Versioned names (a version matrix): ``lightning@2.1.4`` is the ``lightning`` adapter — the same
class, task, sampler, initial weights and probe — run in an isolated environment whose
requirements pin its library (``lightning==2.1.4``, harness.envs builds it). The registry makes
a subclass per version with ``name = "lightning@2.1.4"`` and an ``environment`` of the same name,
and whose ``fit`` first checks that the worker really imported that version
(:func:`imported_library`): a mismatch fails the run instead of labelling it with the wrong
version. Only adapters with a ``library`` take a version.

Nothing here imports torch at module level: ``bakeoff list`` must answer in about a second.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import re
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.environment import REPO_ROOT
from harness.spec import SpecError, split_adapter

if TYPE_CHECKING:
    from adapters.base import Adapter
    from harness.plugins import CodeIdentity
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

TASK_GROUP = "bakeoff.tasks"
ADAPTER_GROUP = "bakeoff.adapters"
PLUGIN_PATH_ENV = "BAKEOFF_PLUGIN_PATH"
"""Extra folders (``os.pathsep``-separated) in which import paths resolve, after ``sys.path``."""

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
IMPORT_PATH = re.compile(f"{_DOTTED}:{_DOTTED}")
IMPORT_PATH_HINT = "or an import path, package.module:Name"


class RegistryError(ValueError):
    """An unknown or unavailable name; the message lists the valid ones."""


class PluginError(RegistryError):
    """A task or adapter that is named but cannot be loaded: one line saying which and what is wrong."""


class LibraryVersionMismatch(RuntimeError):
    """A versioned adapter's worker imported another version of its library than the name asks for."""


@dataclass(frozen=True, kw_only=True)
class Entry:
    """Where a task or adapter comes from, known without importing it."""

    kind: str
    """``task`` or ``adapter``."""
    name: str
    target: str
    """``module:attribute``."""
    origin: str
    """``built-in``, ``entry point`` or ``import path``."""
    distribution: str | None = None
    version: str | None = None

    @property
    def plugin(self) -> bool:
        return self.origin != "built-in"

    def where(self) -> str:
        if self.origin == "entry point":
            return f"entry point {self.target} of {self.distribution} {self.version}"
        if self.origin == "import path":
            return "import path"
        return self.target


def is_import_path(name: str) -> bool:
    return bool(IMPORT_PATH.fullmatch(name))


def _with_entry_points(builtins: dict[str, str], kind: str, group: str) -> dict[str, Entry]:
    table = {name: Entry(kind=kind, name=name, target=target, origin="built-in") for name, target in builtins.items()}
    for entry in importlib.metadata.entry_points(group=group):
        if entry.name in table:  # a built-in name cannot be taken over by a plugin
            continue
        distribution = getattr(entry, "dist", None)
        table[entry.name] = Entry(
            kind=kind,
            name=entry.name,
            target=entry.value.strip(),
            origin="entry point",
            distribution=distribution.metadata["Name"] if distribution is not None else None,
            version=distribution.version if distribution is not None else None,
        )
    return table


@cache
def task_table() -> dict[str, Entry]:
    return _with_entry_points(BUILTIN_TASKS, "task", TASK_GROUP)


@cache
def adapter_table() -> dict[str, Entry]:
    return _with_entry_points(BUILTIN_ADAPTERS, "adapter", ADAPTER_GROUP)


def clear_caches() -> None:
    """Forget loaded plugins and entry points (tests that add a plugin distribution to the path)."""
    task_table.cache_clear()
    adapter_table.cache_clear()
    _load_task_class.cache_clear()
    _load_adapter_class.cache_clear()
    _variant_class.cache_clear()


def task_names() -> list[str]:
    return sorted(task_table())


def adapter_names() -> list[str]:
    return sorted(adapter_table())


def _entry(kind: str, name: str, table: dict[str, Entry]) -> Entry:
    if name in table:
        return table[name]
    if is_import_path(name):
        return Entry(kind=kind, name=name, target=name, origin="import path")
    raise RegistryError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))} ({IMPORT_PATH_HINT})")


def task_entry(name: str) -> Entry:
    return _entry("task", name, task_table())


def adapter_entry(name: str) -> Entry:
    """The entry of an adapter name; a versioned name (``lightning@2.1.4``) gives its base adapter's."""
    base, _ = _split(name)
    return _entry("adapter", base, adapter_table())


# --- loading ------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _where_raised(error: BaseException) -> str:
    """``file:line`` of the innermost frame outside importlib, for a plugin that fails while importing."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "importlib" not in f.filename]
    if isinstance(error, SyntaxError) or not frames:
        return ""
    frame = frames[-1]
    try:
        shown = os.path.relpath(frame.filename)
        filename = shown if not shown.startswith("..") else frame.filename
    except ValueError:
        filename = frame.filename
    return f" at {filename}:{frame.lineno}"


def _plugin_path() -> list[str]:
    return [folder for folder in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if folder]


def _import_module(module_name: str):
    for folder in _plugin_path():  # after sys.path: never shadows an installed package
        if folder not in sys.path:
            sys.path.append(folder)
    return importlib.import_module(module_name)


def _is_prefix(package: str, module_name: str) -> bool:
    return module_name == package or module_name.startswith(package + ".")


def _fail(entry: Entry, problem: str) -> PluginError:
    if entry.origin == "built-in":
        return PluginError(f"{entry.kind} {entry.name!r} is not available here ({_one_line(problem)})")
    return PluginError(f"{entry.kind} {entry.name!r} ({entry.where()}): {_one_line(problem)}")


def _import_target(entry: Entry) -> Any:
    module_name, _, attribute = entry.target.partition(":")
    if not module_name or not attribute:
        raise _fail(entry, f"target {entry.target!r} is not of the form package.module:Name")
    try:
        loaded = _import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # a typo in a plugin is its problem, not a crash of bakeoff
        missing = isinstance(error, ModuleNotFoundError) and error.name and _is_prefix(error.name, module_name)
        if missing:  # the plugin itself is not there (rather than something it imports)
            hint = " (is it installed, on PYTHONPATH, or in the current directory?)" if entry.plugin else ""
            raise _fail(entry, f"cannot import {module_name}: {type(error).__name__}: {error}{hint}") from None
        prefix = "" if entry.origin == "built-in" else f"importing {module_name} failed: "
        raise _fail(entry, f"{prefix}{type(error).__name__}: {error}{_where_raised(error)}") from None
    for part in attribute.split("."):
        try:
            loaded = getattr(loaded, part)
        except AttributeError:
            raise _fail(entry, f"{module_name} has no attribute {attribute!r}") from None
        except Exception as error:  # a module __getattr__ that fails
            raise _fail(entry, f"{module_name}.{attribute}: {type(error).__name__}: {error}") from None
    return loaded


@dataclass(frozen=True)
class _Loaded:
    """A load's outcome, cached either way: the object, or the one-line reason it cannot be used."""

    value: Any = None
    problem: PluginError | None = None

    def get(self) -> Any:
        if self.problem is not None:
            raise PluginError(str(self.problem))
        return self.value


def _check_task_class(entry: Entry, loaded: Any) -> type[Task]:
    from tasks.base import OptimizerRecipe, Task, TaskDefaults, Tolerance

    if not (isinstance(loaded, type) and issubclass(loaded, Task)):
        raise _fail(entry, f"{entry.target} is {_kind_of(loaded)}, not a Task subclass (from bakeoff import Task)")
    problems = []
    for attribute, expected in (("name", str), ("description", str), ("defaults", TaskDefaults)):
        if not isinstance(getattr(loaded, attribute, None), expected):
            problems.append(f"class attribute {attribute!r} must be a {expected.__name__}")
    if not isinstance(getattr(loaded, "optimizer", None), OptimizerRecipe):
        problems.append("class attribute 'optimizer' must be an OptimizerRecipe")
    tolerances = getattr(loaded, "tolerances", None)
    if not isinstance(tolerances, Mapping) or not all(isinstance(t, Tolerance) for t in tolerances.values()):
        problems.append("class attribute 'tolerances' must map precision names to Tolerance objects")
    elif "fp32" not in tolerances:
        problems.append("'tolerances' must declare at least 'fp32'")
    for method in ("build_data", "build_model"):
        if getattr(loaded, method) is getattr(Task, method):
            problems.append(f"it does not implement {method}()")
    if problems:
        raise _fail(entry, f"{loaded.__name__} does not satisfy the Task contract: " + "; ".join(problems))
    _construct(entry, loaded)
    return loaded


def _check_adapter_object(entry: Entry, loaded: Any) -> type[Adapter]:
    from adapters.base import MODES, STYLES, Adapter

    if isinstance(loaded, type) and issubclass(loaded, Adapter):
        problems = []
        if not isinstance(getattr(loaded, "name", None), str):
            problems.append("class attribute 'name' must be a string")
        if getattr(loaded, "style", None) not in STYLES:
            problems.append(f"class attribute 'style' must be one of {', '.join(STYLES)}")
        if not loaded.modes or not set(loaded.modes) <= set(MODES):
            problems.append(f"'modes' must be a non-empty subset of {', '.join(MODES)}")
        if loaded.fit is Adapter.fit:
            problems.append("it does not implement fit(job)")
        if problems:
            raise _fail(entry, f"{loaded.__name__} does not satisfy the Adapter contract: " + "; ".join(problems))
        _construct(entry, loaded)
        return loaded
    if callable(loaded) and not isinstance(loaded, type):
        from adapters.loop import LoopError, loop_adapter

        try:
            return loop_adapter(loaded, name=entry.name)
        except LoopError as error:
            raise _fail(entry, str(error)) from None
    raise _fail(
        entry,
        f"{entry.target} is {_kind_of(loaded)}, neither an Adapter subclass (from bakeoff import Adapter) nor a "
        "training function train(model, loader, optimizer, loss_fn, steps, probe)",
    )


def _kind_of(loaded: Any) -> str:
    if isinstance(loaded, type):
        return f"the class {loaded.__name__}"
    return f"a {type(loaded).__name__}"


def _construct(entry: Entry, cls: type) -> None:
    try:
        cls()
    except TypeError as error:
        raise _fail(entry, f"{cls.__name__} must be constructible with no arguments ({error})") from None
    except Exception as error:
        raise _fail(entry, f"{cls.__name__}() raised {type(error).__name__}: {error}{_where_raised(error)}") from None


@cache
def _load_task_class(name: str) -> _Loaded:
    try:
        entry = task_entry(name)
        return _Loaded(value=_check_task_class(entry, _import_target(entry)))
    except PluginError as error:
        return _Loaded(problem=error)


def load_task_class(name: str) -> type[Task]:
    """The task class for ``name``; RegistryError for an unknown name, PluginError for a broken one."""
    task_entry(name)  # an unknown name raises here, uncached
    return _load_task_class(name).get()


def get_task(name: str) -> Task:
    return load_task_class(name)()


def task_data_problem(data: Any) -> str | None:
    """What is wrong with what a task's ``build_data`` returned, or None (checked before training).

    Every run is validated on the validation set and names its data by the digest, so both are
    required; ``tensor_data`` builds a correct one.
    """
    from tasks.base import Inferable, TaskData

    if not isinstance(data, TaskData):
        return f"build_data must return a TaskData (bakeoff.tensor_data), got {type(data).__name__}"
    for split in ("train", "valid"):
        try:
            size = len(getattr(data, split))
        except TypeError:
            return f"build_data's {split} set has no length (a torch Dataset with __len__ is needed)"
        if size == 0:
            return f"build_data's {split} set is empty (a validation set is required: every run is validated on it)"
    if not (isinstance(data.digest, str) and re.fullmatch(r"[0-9a-f]{64}", data.digest)):
        return "build_data's digest must be the SHA-256 hex of the data (bakeoff.tensors_digest)"
    if not isinstance(data.inferable, Inferable):
        return "build_data's inferable must be an Inferable (num_classes, input_shape)"
    return None


@cache
def _load_adapter_class(name: str) -> _Loaded:
    """The adapter class for ``name`` (a versioned name gives its variant class), as a cached outcome."""
    try:
        base, version = _split(name)
        if version is not None:
            base_class = _load_adapter_class(base).get()
            return _Loaded(value=_variant_class(base_class, base, version))
        entry = adapter_entry(name)
        return _Loaded(value=_check_adapter_object(entry, _import_target(entry)))
    except PluginError as error:
        return _Loaded(problem=error)


def load_adapter_class(name: str) -> type[Adapter]:
    """The adapter class; RegistryError for an unknown or malformed name, PluginError when it cannot load."""
    base, version = _split(name)
    adapter_entry(name)  # an unknown name raises here, uncached
    if version is not None:
        _check_variant_base(base, version)
    return _load_adapter_class(name).get()


def get_adapter(name: str) -> Adapter:
    """The adapter for ``name``; ``<adapter>@<version>`` gives that adapter pinned to a library version."""
    return load_adapter_class(name)()


def _split(name: str) -> tuple[str, str | None]:
    try:
        return split_adapter(name)
    except SpecError as error:
        raise RegistryError(str(error)) from None


def _check_variant_base(base: str, version: str) -> None:
    loaded = _load_adapter_class(base)
    if loaded.problem is None and not loaded.value.library:
        raise RegistryError(
            f"adapter {base!r} has no library to pin, so '{base}@{version}' means nothing; "
            "a version applies to adapters whose library is a pip distribution (bakeoff list)"
        )


@cache
def _variant_class(base_class: type[Adapter], base: str, version: str) -> type[Adapter]:
    """``base_class`` at ``version`` of its library: same code, its own environment, a checked import."""
    if not base_class.library:
        raise PluginError(
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
    raises RegistryError for a malformed, unknown or library-less variant, or an unloadable base.
    """
    base, version = _split(name)
    if version is None:
        return None
    loaded = load_adapter_class(name)
    return {
        "adapter": name,
        "base": base,
        "version": version,
        "library": loaded.library,
        "base_environment": loaded.base_environment,
        "variant_requirements": dict(loaded.variant_requirements),
    }


# --- plugin code identity -----------------------------------------------------------------------


def task_identity(name: str) -> CodeIdentity | None:
    """A plugin task's code identity (harness.plugins); None for a built-in. Raises like get_task."""
    entry = task_entry(name)
    if not entry.plugin:
        return None  # bakeoff's own code: the result's git sha names it (and nothing is imported here)
    return _identify(entry, load_task_class(name))


def adapter_identity(name: str) -> CodeIdentity | None:
    """A plugin adapter's (or training function's) code identity; None for a built-in."""
    entry = adapter_entry(name)
    if not entry.plugin:
        return None
    loaded = load_adapter_class(name)
    return _identify(entry, getattr(loaded, "train_function", loaded))


def _identify(entry: Entry, loaded: Any) -> CodeIdentity | None:
    from harness.plugins import identify

    try:
        return identify(
            loaded, target=entry.target, origin=entry.origin, distribution=entry.distribution, version=entry.version
        )
    except (OSError, ValueError) as error:
        raise _fail(entry, f"cannot read its source files to identify its code: {error}") from None


# --- versioned libraries ------------------------------------------------------------------------


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


# --- listing without importing ------------------------------------------------------------------

_ADAPTER_DEFAULTS = {"library": None, "modes": ("aligned", "defaults"), "environment": None, "style": None}
_TASK_DEFAULTS = {"options": {}, "description": ""}


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNKNOWN


_UNKNOWN = object()


@cache
def _module_classes(path: Path) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Class name → (base names, literal class attributes) of a module's source, without running it."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    classes: dict[str, tuple[list[str], dict[str, Any]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        attributes: dict[str, Any] = {}
        for statement in node.body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                target, value = statement.targets[0], statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                target, value = statement.target, statement.value
            else:
                continue
            if isinstance(target, ast.Name):
                literal = _literal(value)
                if literal is not _UNKNOWN:
                    attributes[target.id] = literal
        bases = [base.id for base in node.bases if isinstance(base, ast.Name)]
        classes[node.name] = (bases, attributes)
    return classes


def static_attributes(target: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The literal class attributes of a built-in ``module:Class``, read from its source file.

    Bases defined in the same module are merged in; attributes no class in the file sets take
    ``defaults`` (those of the contract's base class). Used by ``bakeoff list`` so that listing
    never imports a library; a test checks it against the imported classes.
    """
    module_name, _, class_name = target.partition(":")
    path = REPO_ROOT / Path(*module_name.split(".")).with_suffix(".py")
    classes = _module_classes(path)
    chain, current = [], class_name
    while current in classes and current not in chain:
        chain.append(current)
        bases = classes[current][0]
        current = bases[0] if bases else ""
    merged = dict(defaults)
    for name in reversed(chain):
        merged.update(classes[name][1])
    return merged


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_tasks() -> list[dict[str, Any]]:
    """One row per task name, from metadata and source text only (nothing is imported)."""
    rows = []
    for name, entry in sorted(task_table().items()):
        row: dict[str, Any] = {"name": name, "origin": entry.origin, "target": entry.target}
        if entry.plugin:
            row.update(distribution=entry.distribution, version=entry.version)
        else:
            attributes = static_attributes(entry.target, _TASK_DEFAULTS)
            row.update(description=attributes.get("description", ""), options=attributes.get("options", {}))
        rows.append(row)
    return rows


def describe_adapters() -> list[dict[str, Any]]:
    """One row per adapter name: style, library and availability from installed distributions' metadata."""
    rows = []
    for name, entry in sorted(adapter_table().items()):
        row: dict[str, Any] = {"name": name, "origin": entry.origin, "target": entry.target, "problem": None}
        if entry.plugin:
            row.update(distribution=entry.distribution, version=entry.version)
            rows.append(row)
            continue
        attributes = static_attributes(entry.target, _ADAPTER_DEFAULTS)
        library, environment = attributes.get("library"), attributes.get("environment")
        row.update(style=attributes.get("style"), library=library, modes=tuple(attributes.get("modes") or ()))
        row["environment"] = environment
        if environment:
            row["environment_built"] = _environment_built(environment)
        elif library:
            row["library_version"] = _installed_version(library)
            if row["library_version"] is None:
                row["problem"] = f"{library} is not installed in this environment"
        rows.append(row)
    return rows


def _environment_built(name: str) -> bool | None:
    from harness import envs

    try:
        return envs.load(envs.load_spec(name)) is not None
    except Exception:  # a missing or unreadable requirements file: the run will say so
        return None
