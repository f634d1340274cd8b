"""What identifies a plugin's code: its distribution, its version and a digest of its source files.

A built-in task or adapter is part of bakeoff: the result's git sha names its code. A plugin (an
entry point of another distribution, or an import path such as ``mypkg.tasks:MyTask``) changes on
its own schedule, so a spec that uses one carries ``task_code`` / ``adapter_code``: the plugin's
distribution, version and a digest over the source files of its top-level package. Changed plugin
code is therefore a new spec id (resume reruns it instead of reusing a stale result), and a worker
that imports other code than its spec names refuses to run (:func:`verify`).

Only ``.py`` files are hashed (sorted by their path inside the package, caches skipped): data
files are named by the task's data digest, and a package's location on this machine is not part
of its identity, so an editable and a regular install of the same code get the same identity.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from harness.spec import Spec, SpecError

DIGEST_LENGTH = 16
OWN_PACKAGES = frozenset({"bakeoff", "harness", "adapters", "tasks", "kernels", "reports"})
"""bakeoff's own top-level packages: code there is named by the result's git sha, never hashed here."""
MAX_SOURCE_FILES = 20_000
"""A top-level package with more Python files than this is not hashed file by file (a mistake,
such as an import path rooted in a whole monorepo, would otherwise stall every command)."""


class PluginCodeMismatch(RuntimeError):
    """A worker imports other plugin code than its spec names."""


@dataclass(frozen=True, kw_only=True)
class CodeIdentity:
    """One plugin's code: where it was found, which distribution ships it, and its source digest."""

    target: str
    """The ``module:attribute`` it was loaded from."""
    origin: str
    """``entry point`` or ``import path``."""
    distribution: str | None
    version: str | None
    packages: tuple[str, ...]
    """The top-level packages (or modules) whose sources are hashed."""
    source_files: int
    source_digest: str

    @property
    def code(self) -> str:
        """The spec's ``task_code`` / ``adapter_code``: changes whenever the code, version or distribution does."""
        if self.distribution:
            return f"{self.distribution}=={self.version} {self.source_digest}"
        return self.source_digest

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "packages": list(self.packages), "code": self.code}


def _python_files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, directories, files in os.walk(folder):
        directories[:] = sorted(d for d in directories if d != "__pycache__" and not d.startswith("."))
        found += [Path(root) / name for name in sorted(files) if name.endswith(".py")]
        if len(found) > MAX_SOURCE_FILES:
            raise ValueError(f"{folder} holds more than {MAX_SOURCE_FILES} Python files; refusing to hash them all")
    return found


def package_sources(top: str) -> list[tuple[str, Path]]:
    """The source files of top-level package or module ``top``: (name inside the package, path).

    Found with ``importlib.util.find_spec`` on the top-level name, which locates it (editable
    finders included) without running its ``__init__``.
    """
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise ValueError(f"cannot locate the sources of {top!r}")
    if spec.submodule_search_locations:
        sources = []
        for location in spec.submodule_search_locations:
            base = Path(location)
            sources += [(f"{top}/{path.relative_to(base).as_posix()}", path) for path in _python_files(base)]
        return sorted(sources)
    if spec.origin and os.path.isfile(spec.origin):
        return [(Path(spec.origin).name, Path(spec.origin))]
    raise ValueError(f"{top!r} has no source files to hash (origin {spec.origin!r})")


def source_digest(tops: tuple[str, ...]) -> tuple[str, int]:
    """SHA-256 (first 16 hex digits) over every source file's name and bytes, and the file count."""
    hasher = hashlib.sha256()
    count = 0
    for top in tops:
        for name, path in package_sources(top):
            content = path.read_bytes()
            hasher.update(f"{name}\0{len(content)}\0".encode())
            hasher.update(content)
            count += 1
    return hasher.hexdigest()[:DIGEST_LENGTH], count


def top_level(module_name: str) -> str:
    return module_name.split(".", 1)[0]


def identify(
    loaded: Any, *, target: str, origin: str, distribution: str | None = None, version: str | None = None
) -> CodeIdentity | None:
    """The identity of a loaded plugin object (class or function) found at ``target``.

    The hashed packages are the target module's top-level package and, when the object was
    defined elsewhere (re-exported), that module's top-level package too; bakeoff's own packages
    are never hashed. None when the object is entirely bakeoff's own code.
    """
    tops = {top_level(target.partition(":")[0])}
    defined_in = getattr(loaded, "__module__", None)
    if defined_in and top_level(defined_in) in sys.modules:
        tops.add(top_level(defined_in))
    tops_tuple = tuple(sorted(tops - OWN_PACKAGES))
    if not tops_tuple:
        return None
    if distribution is None:
        distribution, version = owning_distribution(tops_tuple[0])
    digest, count = source_digest(tops_tuple)
    return CodeIdentity(
        target=target,
        origin=origin,
        distribution=distribution,
        version=version,
        packages=tops_tuple,
        source_files=count,
        source_digest=digest,
    )


def owning_distribution(top: str) -> tuple[str | None, str | None]:
    """The installed distribution that provides top-level package ``top``, if any (and its version)."""
    import importlib.metadata

    names = importlib.metadata.packages_distributions().get(top) or []
    for name in names:
        try:
            found = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if _in_source_folder(found):
            continue
        return name, found.version
    return None, None


def _in_source_folder(found) -> bool:
    """Whether a distribution's metadata lies in a folder import paths resolve from, not an installation.

    Building a package in place leaves ``<name>.egg-info`` in its source folder; with that folder on
    the plugin path the metadata is visible though nothing is installed, and the code would be
    named after a distribution (and version) that a ``pip uninstall`` already removed.
    """
    from harness.registry import PLUGIN_PATH_ENV

    folders = [Path(f).resolve() for f in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if f]
    try:
        location = Path(str(found.locate_file(""))).resolve()
    except (OSError, TypeError, ValueError):
        return False
    return location in folders


def with_code_identity(spec: Spec, *, strict: bool = True, memo: dict | None = None) -> Spec:
    """``spec`` with its plugin task's and adapter's code identities filled in (built-ins: left empty).

    Called wherever specs are made from names (the CLI, suites, bakeoff.testing), so the spec id
    of a run on plugin code follows that code. A plugin that cannot be loaded raises SpecError
    (one line, naming it); with ``strict=False`` its field stays empty instead, for the built-in
    suites, which list every installed adapter and report one that cannot load as ``unsupported``.
    ``memo`` (a dict the caller keeps while expanding many specs) identifies each name once.
    """
    from harness.registry import RegistryError, adapter_identity, task_identity

    codes = {}
    for field_name, identity_of, name in (
        ("task_code", task_identity, spec.task),
        ("adapter_code", adapter_identity, spec.adapter),
    ):
        key = (field_name, name)
        if memo is None or key not in memo:
            try:
                identity = identity_of(name)
            except RegistryError as error:
                if strict:
                    raise SpecError(str(error)) from None
                identity = None
            if memo is not None:
                memo[key] = identity
        else:
            identity = memo[key]
        codes[field_name] = identity.code if identity else ""
    return replace(spec, **codes)


def verify(spec: Spec, task: CodeIdentity | None, adapter: CodeIdentity | None) -> None:
    """Refuse to run when the code this worker imports is not the code the spec names.

    A spec made without identities (empty fields, e.g. built by hand) is not checked; its result
    still records what ran.
    """
    for kind, expected, found in (("task", spec.task_code, task), ("adapter", spec.adapter_code, adapter)):
        actual = found.code if found else ""
        if expected and expected != actual:
            raise PluginCodeMismatch(
                f"the {kind}'s code changed since this spec was made (spec: {expected!r}, this worker imports "
                f"{actual or 'built-in code'!r}); make the spec again to run the new code under its own id"
            )
