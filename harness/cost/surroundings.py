"""What the counting worker sees around it: the same folder listings, paths and environment on every rerun.

Instruction counts repeat only if the worker builds the same objects at the same addresses (see
:mod:`harness.cost.entropy`). The worker's surroundings reach those addresses too, before any
library is imported:

- **folder listings.** Python's import system caches the listing of every folder on ``sys.path``
  it looks in (one string per entry). ``python -m`` puts the current folder first, and the pass
  used to run from the repository, so every file lying at its top level (``.pytest_cache``, a
  scratch file, a new results folder) added objects early and moved every address after them.
  Measured on the Intel instance (2026-12-03): three empty files at the repository's top level
  moved native's count by -0.09% and the keras aligned difference by +0.39%, while the two runs
  of each pass agreed to 1e-6. This is why reruns minutes apart differed more than the runs of
  one pass did;
- **paths.** The plan, the window log and the fits' scratch folder reach the worker as path
  strings, whose lengths follow ``--results-dir``;
- **environment.** ``os.environ`` is built at start-up: a shell's ``OLDPWD``, ``_``, ``TERM`` or
  an activated virtual environment add or lengthen entries;
- **the plugin path.** The CLI puts the current folder on ``BAKEOFF_PLUGIN_PATH``, and the registry
  appends those folders to ``sys.path`` before it imports even a built-in adapter; the next import
  that missed listed the folder. The worker's plugin path leaves out the repository (the stage
  stands for its packages), so run from the repository the pass lists nothing of it. (Appending
  the folders only on a miss instead broke plugin identities: a user's project folder beside its
  installed package then resolved differently in the CLI and the worker.)

So the worker runs in a *stage*: a fresh folder under the system's temporary folder (a fixed-length
name) holding links to the project's packages and nothing else, the plan, and per run a scratch
folder and a link to the run's window log. It is the worker's current folder and its only project
entry on ``PYTHONPATH``. Its environment keeps only the variables that configure what it runs
(:data:`KEPT_NAMES`, :data:`KEPT_PREFIXES`) and a fixed ``PATH``.

Measured with all of it (2026-12-03, the same instance): two nine-cell passes, the second with three
junk files at the top level, other shell variables and a longer ``--results-dir``, agreed to 0.0007%
or better on every aligned cell's difference and 0.04% on defaults cells.

Not covered: the location of the checkout and its virtual environment (every module's file name
is a path under them), the code itself (a docstring added to one imported module moved the keras
aligned difference by +0.36%: compare counts across commits to about 0.5%), and the folders a
user's plugins are imported from (``BAKEOFF_PLUGIN_PATH``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.registry import PLUGIN_PATH_ENV

PACKAGES = ("adapters", "bakeoff", "harness", "kernels", "reports", "tasks")
"""The project's top-level packages (``[tool.setuptools] packages`` in pyproject.toml): all the stage links."""

KEPT_NAMES = frozenset(
    {
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "GLIBC_TUNABLES",
        "MPLBACKEND",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
    }
)
"""Variables the worker keeps by name: locale, home and caches, the loader's and allocator's settings."""

KEPT_PREFIXES = (
    "LC_",
    "PYTHON",
    "BAKEOFF_",
    "KERAS_",
    "TORCH",
    "PYTORCH_",
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "FASTAI_",
    "LIGHTNING_",
    "PL_",
    "OMP_",
    "MKL_",
    "KMP_",
    "OPENBLAS_",
    "CUDA_",
    "NVIDIA_",
    "VALGRIND_",
)
"""Prefixes of variables that configure Python, bakeoff, torch, the libraries and their thread pools."""

STAGED = "run from a stage of package links, fixed-length paths, kept variables only (harness.cost.surroundings)"
"""What an instruction record says of its worker's surroundings."""

SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")


def kept(name: str) -> bool:
    return name in KEPT_NAMES or name.startswith(KEPT_PREFIXES)


def counting_environment(
    environ: Mapping[str, str], *, repo_root: Path, stage: Path, python: str, tools: Iterable[str] = ()
) -> dict[str, str]:
    """The worker's environment: the kept variables of ``environ``, the stage first on ``PYTHONPATH``
    (entries naming the repository's top level are dropped there and from ``BAKEOFF_PLUGIN_PATH``:
    the stage stands for it), and a
    ``PATH`` of the interpreter's and ``tools``' folders, then the system's."""
    env = {name: value for name, value in environ.items() if kept(name)}
    repo = Path(repo_root).resolve()

    def elsewhere(variable: str) -> list[str]:  # the entries of a path variable outside the repository
        entries = [entry for entry in environ.get(variable, "").split(os.pathsep) if entry]
        return [entry for entry in entries if entry != "." and Path(entry).resolve() != repo]

    env["PYTHONPATH"] = os.pathsep.join([str(stage), *elsewhere("PYTHONPATH")])
    plugin_folders = elsewhere(PLUGIN_PATH_ENV)
    if plugin_folders:
        env[PLUGIN_PATH_ENV] = os.pathsep.join(plugin_folders)
    else:
        env.pop(PLUGIN_PATH_ENV, None)
    # A tool given by bare name (not found on the caller's PATH) adds no folder: "." would put the
    # stage's own listing on the search path.
    tool_folders = [str(Path(tool).parent) for tool in tools if Path(tool).is_absolute()]
    folders = [str(Path(python).parent), *tool_folders, *SYSTEM_PATH]
    env["PATH"] = os.pathsep.join(dict.fromkeys(folders))
    return env


class Stage:
    """A fixed-shape folder to run the worker from; :meth:`close` removes it (the run folders stay)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, repo_root: Path, plan: dict[str, Any], run_logs: Mapping[int, Path]) -> Stage:
        """Links to ``repo_root``'s packages, the plan, and per run ``runs/run-N/work`` and
        ``runs/run-N/windows.jsonl`` (a link to that run's log in its results folder). The runs sit one
        level down, so the stage's own listing is the same whatever the number of runs."""
        root = Path(tempfile.mkdtemp(prefix="bakeoff-count-"))
        stage = cls(root)
        try:
            for name in PACKAGES:
                target = Path(repo_root) / name
                if not target.is_dir():
                    raise FileNotFoundError(f"the project package {name!r} is missing from {repo_root}")
                (root / name).symlink_to(target.resolve(), target_is_directory=True)
            staged_plan = {**plan, "workroot": str(stage.workroot(min(run_logs)))}
            stage.plan_path.write_text(json.dumps(staged_plan, indent=1, sort_keys=True))
            for index, log in run_logs.items():
                stage.workroot(index).mkdir(parents=True)
                stage.log_path(index).symlink_to(Path(log).resolve())
        except BaseException:
            stage.close()
            raise
        return stage

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def log_path(self, index: int) -> Path:
        return self.root / "runs" / f"run-{index}" / "windows.jsonl"

    def workroot(self, index: int) -> Path:
        return self.root / "runs" / f"run-{index}" / "work"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
