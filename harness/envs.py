"""Isolated worker environments: an adapter may declare its own pip requirements (issue 11).

Some libraries can never share the main environment (Lightning Flash needs pytorch-lightning
1.9 while the main environment has Lightning 2.x; comparing two versions of one library has
the same wall). Such an adapter names a requirements file ``envs/<name>.txt``; bakeoff builds
it once under the ignored ``.envs/`` folder, keyed by a hash of the requirements and the
interpreter, runs that adapter's workers with its interpreter, and records the environment's
exact package list in each result. The worker is the same ``harness.worker`` (the runner puts
the repository on ``PYTHONPATH``), so task, sampler, initial weights and probe are the same.

Sharing torch instead of installing it again: the environment is a venv whose own
site-packages hold only what its pins change, plus a ``.pth`` file that appends the main
``.venv`` site-packages *after* its own. Its pins win (its pytorch-lightning 1.9.5 shadows the
main 2.6.6), everything else (torch, ~1.7 GB) is shared, and pip in it sees torch as installed
so it never downloads it. pip never removes a distribution that lies outside the environment
it installs into ("Not uninstalling ... outside environment"); :func:`build` checks that the
main site-packages listing is byte-for-byte the same before and after, and fails loudly if not.

An environment with ``# bakeoff: isolated`` in its requirements file gets no shared path (a
full, self-contained install, for pins that cannot share torch).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT

ENVS_DIR = REPO_ROOT / "envs"
"""Committed requirement files, one per environment: ``envs/<name>.txt``."""
BUILD_ROOT = REPO_ROOT / ".envs"
"""Built environments (git-ignored): ``.envs/<name>-<key>/``."""
MANIFEST = "bakeoff-env.json"
"""Written last by a successful build: its presence means the environment is ready."""
SHARED_PTH = "zz-bakeoff-shared.pth"
ISOLATED_MARKER = "# bakeoff: isolated"
BUILD_TIMEOUT_S = 1800
KEY_LENGTH = 12


class EnvironmentBuildError(RuntimeError):
    """An environment could not be built (the message carries pip's output tail)."""


@dataclass(frozen=True, kw_only=True)
class EnvironmentSpec:
    """What an environment is made of: its requirements, and whether it shares the main packages."""

    name: str
    requirements: tuple[str, ...]
    share_main: bool = True
    base_python: str = ""
    """The interpreter the venv is made from; the main environment's base interpreter by default."""
    shared_site_packages: str = ""
    """The site-packages appended after the environment's own (empty when not sharing)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]*", self.name):
            raise ValueError(f"environment name {self.name!r}: letters, digits, '_', '.', '@', '-' only")
        if not self.base_python:
            object.__setattr__(self, "base_python", base_interpreter())
        if self.share_main and not self.shared_site_packages:
            object.__setattr__(self, "shared_site_packages", sysconfig.get_paths()["purelib"])
        if not self.share_main:
            object.__setattr__(self, "shared_site_packages", "")

    @property
    def key(self) -> str:
        """Hash of everything the build depends on: requirements, interpreter, what it shares."""
        identity = {
            "requirements": list(self.requirements),
            "python": python_version(self.base_python),
            "base_python": self.base_python,
            "shared_site_packages": self.shared_site_packages,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]

    @property
    def path(self) -> Path:
        return BUILD_ROOT / f"{self.name}-{self.key}"


@dataclass(frozen=True, kw_only=True)
class BuiltEnvironment:
    spec: EnvironmentSpec
    path: Path
    manifest: dict[str, Any]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return Path(self.manifest["site_packages"])


def base_interpreter() -> str:
    """The real interpreter behind the running one (a venv's ``python`` is a link to it)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def python_version(interpreter: str) -> str:
    if Path(interpreter).resolve() == Path(sys.executable).resolve() or interpreter == base_interpreter():
        return ".".join(map(str, sys.version_info[:3]))
    done = subprocess.run(
        [interpreter, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def load_spec(name: str, envs_dir: Path | None = None) -> EnvironmentSpec:
    """Read ``envs/<name>.txt``: one pip requirement per line, ``#`` comments."""
    path = (envs_dir or ENVS_DIR) / f"{name}.txt"
    if not path.exists():
        raise EnvironmentBuildError(f"no requirements file {path} for environment {name!r}")
    text = path.read_text()
    requirements = tuple(line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip())
    return EnvironmentSpec(name=name, requirements=requirements, share_main=ISOLATED_MARKER not in text)


def site_listing(site_packages: str | Path) -> list[str]:
    """The sorted entries of a site-packages folder: what pip installed or removed shows up here."""
    try:
        return sorted(os.listdir(site_packages))
    except FileNotFoundError:
        return []


def load(spec: EnvironmentSpec) -> BuiltEnvironment | None:
    """The built environment for ``spec``, or None when it has not been built (or is incomplete)."""
    manifest_path = spec.path / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if not (spec.path / "bin" / "python").exists():
        return None
    return BuiltEnvironment(spec=spec, path=spec.path, manifest=manifest)


def ensure_built(spec: EnvironmentSpec, *, log=None) -> BuiltEnvironment:
    """Build ``spec`` unless a finished build exists; one builder at a time per environment."""
    existing = load(spec)
    if existing is not None:
        return existing
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f"{spec.name}-{spec.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        existing = load(spec)
        if existing is not None:
            return existing
        return build(spec, log=log)


def _run(command: list[str], log_file: Path, timeout_s: float) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False)


def _tail(path: Path, characters: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-characters:]
    except OSError:
        return ""


def build(spec: EnvironmentSpec, *, log=None) -> BuiltEnvironment:
    """Create the venv in a scratch folder, install the requirements, check, then move it in place.

    pip runs from the main environment (``pip --python <env python>``), so the new venv needs
    no pip of its own; the scratch-then-rename makes a half-built environment never look ready.
    """
    started = time.perf_counter()
    final = spec.path
    scratch = final.with_name(f"{final.name}.building-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    log_file = scratch / "build.log"
    shared_before = site_listing(spec.shared_site_packages) if spec.share_main else []

    def step(command: list[str], what: str) -> None:
        if log:
            log(f"[envs] {spec.name}: {what}")
        done = _run(command, log_file, BUILD_TIMEOUT_S)
        if done.returncode != 0:
            raise EnvironmentBuildError(
                f"building environment {spec.name!r} failed at {what} (exit {done.returncode}); "
                f"log {log_file}:\n{_tail(log_file)}"
            )

    step([spec.base_python, "-m", "venv", "--without-pip", str(scratch)], "venv")
    python = scratch / "bin" / "python"
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if spec.share_main:
        # A path line in a .pth is appended to sys.path after this site-packages: own pins win.
        (Path(site_packages) / SHARED_PTH).write_text(spec.shared_site_packages + "\n")
    install_started = time.perf_counter()
    if spec.requirements:
        step(
            [sys.executable, "-m", "pip", "--python", str(python), "install", *spec.requirements],
            "pip install " + " ".join(spec.requirements),
        )
    install_s = time.perf_counter() - install_started
    if spec.share_main:
        shared_after = site_listing(spec.shared_site_packages)
        if shared_after != shared_before:
            changed = sorted(set(shared_before) ^ set(shared_after))
            raise EnvironmentBuildError(
                f"building {spec.name!r} changed the shared site-packages {spec.shared_site_packages}: "
                f"{changed}. pip must only install into the new environment."
            )
    log_text = _tail(log_file, 10**7)
    pip_check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, check=False)
    # Rename before writing the manifest: the venv's paths are relative to where its python lives.
    shutil.rmtree(final, ignore_errors=True)
    os.rename(scratch, final)
    site_packages = site_packages.replace(str(scratch), str(final))
    manifest = {
        "name": spec.name,
        "key": spec.key,
        "requirements": list(spec.requirements),
        "share_main": spec.share_main,
        "shared_site_packages": spec.shared_site_packages,
        "base_python": spec.base_python,
        "python_version": python_version(spec.base_python),
        "site_packages": site_packages,
        "built_at_unix": time.time(),
        "build_s": round(time.perf_counter() - started, 2),
        "install_s": round(install_s, 2),
        "own_disk_bytes": disk_bytes(final),
        "not_uninstalled_outside": log_text.count("Not uninstalling"),
        "shared_site_packages_unchanged": spec.share_main or None,
        # pip check may name packages of the shared main environment whose requirements the
        # environment's own pins shadow; it is recorded, not fatal.
        "pip_check": (pip_check.stdout + pip_check.stderr).strip()[-4000:],
    }
    (final / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if log:
        log(f"[envs] {spec.name}: built in {manifest['build_s']:.1f} s, {manifest['own_disk_bytes'] / 1e6:.1f} MB own")
    return BuiltEnvironment(spec=spec, path=final, manifest=manifest)


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed: shared packages are not counted)."""
    total = 0
    for root, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(root, file)
            if not os.path.islink(path):
                total += os.stat(path).st_size
    return total


_DIST_INFO = re.compile(r"^(?P<name>.+?)-(?P<version>[^-]+?)\.(dist-info|egg-info)$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packages(built: BuiltEnvironment) -> list[dict[str, str]]:
    """Every distribution the environment's interpreter sees, with where it comes from.

    ``own`` entries are the environment's pins; ``shared`` ones come from the main
    site-packages and are listed only when no own distribution of that name shadows them.
    Read from the folder names, so recording it in every result costs milliseconds.
    """
    seen: dict[str, dict[str, str]] = {}
    sources = [("own", built.site_packages)]
    if built.manifest.get("share_main"):
        sources.append(("shared", Path(built.manifest["shared_site_packages"])))
    for origin, folder in sources:
        for entry in site_listing(folder):
            match = _DIST_INFO.match(entry)
            if not match:
                continue
            name = _normalize(match["name"])
            seen.setdefault(name, {"name": name, "version": match["version"], "origin": origin})
    return [seen[name] for name in sorted(seen)]


def record(built: BuiltEnvironment) -> dict[str, Any]:
    """What a result says about the environment its worker ran in."""
    return {
        "name": built.spec.name,
        "key": built.spec.key,
        "python": str(built.python),
        "requirements": list(built.spec.requirements),
        "share_main": built.manifest.get("share_main"),
        "build_s": built.manifest.get("build_s"),
        "own_disk_bytes": built.manifest.get("own_disk_bytes"),
        "packages": packages(built),
    }


def declared_environment(adapter_name: str) -> str | None:
    """The environment an adapter declares (its ``environment`` class attribute), if any."""
    from harness.registry import _load_adapter_class

    try:
        loaded = _load_adapter_class(adapter_name)
    except Exception:  # a broken adapter module fails in its worker, with its own error, as before
        return None
    if isinstance(loaded, str):
        return None
    return getattr(loaded, "environment", None)


def prepare(adapter_name: str, *, log=None) -> BuiltEnvironment | None:
    """The runner's hook: the built environment an adapter's workers run in (None: the main one)."""
    name = declared_environment(adapter_name)
    if name is None:
        return None
    return ensure_built(load_spec(name), log=log)


def attach(result: dict[str, Any], built: BuiltEnvironment | None) -> dict[str, Any]:
    """Add the isolated environment's record to a worker's result (no-op for the main environment)."""
    if built is not None:
        result.setdefault("environment", {})["isolated"] = record(built)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.envs build NAME...`` / ``show NAME``: build ahead of a suite, or inspect."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.envs", description=main.__doc__)
    parser.add_argument("action", choices=("build", "show", "path"))
    parser.add_argument("names", nargs="+", help="environment names (envs/<name>.txt)")
    args = parser.parse_args(argv)
    for name in args.names:
        spec = load_spec(name)
        if args.action == "path":
            print(spec.path / "bin" / "python")
            continue
        built = (
            ensure_built(spec, log=lambda line: print(line, file=sys.stderr)) if args.action == "build" else load(spec)
        )
        if built is None:
            print(f"{name}: not built ({spec.path})")
            continue
        summary = {key: built.manifest[key] for key in ("name", "key", "build_s", "install_s", "own_disk_bytes")}
        summary["python"] = str(built.python)
        summary["own_packages"] = [f"{p['name']}=={p['version']}" for p in packages(built) if p["origin"] == "own"]
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
