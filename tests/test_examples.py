"""The worked example plugin (examples/bakeoff-example), installed from outside the tree like a user's.

A throwaway environment under a temporary folder shares ``.venv``'s packages the way isolated
adapter environments do (harness.envs: a ``.pth`` that ``site.addsitedir``s the main site-packages),
and the example is pip-installed into it from a copy outside the repository, non-editable and
editable (pip builds it offline with the shared setuptools). Nothing is installed into ``.venv``.

- every main-environment adapter (native, lightning, fastai, keras, hf, the example's own adapter
  and loop, by entry-point name and by import path) runs the installed task in one process of the
  throwaway environment and gets its declared verdict against native (~1 min);
- the isolated ``lightning@2.1.4`` runs it through ``bakeoff run --against native`` with the
  package installed non-editable, then editable (the case that failed with a bare ``.pth`` path
  line; a control below shows why), then not installed but named by import path from the current
  directory, building that environment once in the temporary folder (~5-30 s from pip's cache, more
  on a fresh machine) and running three specs and two partners (~1-2 min);
- Flash, whose environment takes minutes to build, is ``slow`` (``make test-deep``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import envs
from tests.conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "bakeoff-example"
TASK = "example-spirals"
MAIN_ADAPTERS = [
    "native",
    "lightning",
    "fastai",
    "keras",
    "hf",
    "example-trainer",
    "example-loop",
    "bakeoff_example.adapters:MiniTrainerAdapter",
]


@dataclass(frozen=True)
class UserEnvironment:
    python: Path
    source: Path
    build_root: Path
    work: Path

    def environment(self) -> dict[str, str]:
        """The repository's code first (CI: the same code as installed), isolated builds in the temporary folder."""
        return {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "BAKEOFF_ENVS_ROOT": str(self.build_root),
            "BAKEOFF_PLUGIN_PATH": "",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def run(self, *args: str, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            # By default neither the repository nor the example's source: the package must come from the install.
            cwd=cwd or self.work,
            env=self.environment(),
            timeout=timeout,
        )

    def install(self, *, editable: bool) -> None:
        self.pip("uninstall", "-y", "bakeoff-example")
        self.pip("install", "--no-build-isolation", "--no-deps", *(["-e"] if editable else []), str(self.source))

    def pip(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(self.python), *args],
            capture_output=True,
            text=True,
            cwd=self.work,
            env={**self.environment(), "PYTHONPATH": ""},
            timeout=600,
        )
        assert done.returncode == 0 or args[0] == "uninstall", done.stdout + done.stderr


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> UserEnvironment:
    root = tmp_path_factory.mktemp("user")
    source, work = root / "src" / "bakeoff-example", root / "work"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    work.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envs, "BUILD_ROOT", root / "envs")
        built = envs.ensure_built(envs.EnvironmentSpec(name="user", requirements=()))
    return UserEnvironment(python=built.python, source=source, build_root=root / "envs", work=work)


VERDICTS_SCRIPT = """
import json, sys
from pathlib import Path
import bakeoff_example
from bakeoff.testing import make_spec
from harness.against import partner_for, run_against
from harness.worker import run_inline

folder = Path(sys.argv[1])
rows = []
for adapter in sys.argv[2:]:
    spec = make_spec("example-spirals", adapter, steps=8)
    outcome = run_against(spec, partner_for(spec), results_dir=folder, run=lambda s: run_inline(s, folder))
    candidate = outcome.candidate
    rows.append({
        "adapter": adapter, "status": candidate["status"], "error": candidate["error"],
        "verdict": outcome.verdict.verdict, "declared": outcome.declared, "holds": outcome.as_declared,
        "task_plugin": candidate["task"].get("plugin"), "adapter_plugin": candidate["adapter"].get("plugin"),
    })
print("ROWS " + json.dumps({"module": bakeoff_example.__file__, "rows": rows}))
"""


def test_an_installed_plugin_runs_through_every_main_adapter_with_its_declared_verdicts(user_env, tmp_path):
    user_env.install(editable=False)
    listing = user_env.run("-m", "harness.cli", "list")
    assert listing.returncode == 0, listing.stderr
    assert "example-spirals" in listing.stdout and "of bakeoff-example 0.1.0" in listing.stdout
    assert "example-trainer" in listing.stdout and "example-loop" in listing.stdout
    done = user_env.run("-c", VERDICTS_SCRIPT, str(tmp_path), *MAIN_ADAPTERS)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("ROWS "))[5:])
    assert Path(report["module"]).is_relative_to(user_env.python.parent.parent)  # the installed copy
    rows = {row["adapter"]: row for row in report["rows"]}
    assert list(rows) == MAIN_ADAPTERS
    for adapter, row in rows.items():
        assert row["status"] == "ok", (adapter, row["error"])
        assert row["declared"] == "bitwise" and row["verdict"] == "bitwise" and row["holds"], (adapter, row)
        task = row["task_plugin"]
        assert (task["origin"], task["distribution"], task["version"]) == ("entry point", "bakeoff-example", "0.1.0")
    assert rows["native"]["adapter_plugin"] is None  # built-ins carry no code identity
    assert rows["example-loop"]["adapter_plugin"]["target"] == "bakeoff_example.train:train"
    by_path = rows["bakeoff_example.adapters:MiniTrainerAdapter"]["adapter_plugin"]
    assert by_path["origin"] == "import path" and by_path["distribution"] == "bakeoff-example"
    # The example's own CI tests (the bakeoff fixture, hypothesis strategies) pass against the install.
    tests = user_env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args(), str(user_env.source / "tests"))
    assert tests.returncode == 0 and "3 passed" in tests.stdout, (tests.stdout + tests.stderr)[-3000:]


def plugin_args() -> list[str]:
    """``-p bakeoff.pytest_plugin`` unless the installed bakeoff already registers it (after a reinstall, CI)."""
    import importlib.metadata

    installed = {entry.name for entry in importlib.metadata.entry_points(group="pytest11")}
    return [] if "bakeoff.pytest_plugin" in installed else ["-p", "bakeoff.pytest_plugin"]


def test_the_upgrade_guard_workflow_runs_valid_commands():
    """Every `bakeoff run` line of the example's CI workflow parses, for each value of its matrix."""
    from harness.cli import build_parser

    workflow = (EXAMPLE / "ci" / "upgrade-guard.yml").read_text()
    matrix = ["lightning@2.1.4", "lightning"]
    assert f"lightning: {json.dumps(matrix)}" in workflow
    lines = [line.strip().removeprefix("run: ") for line in workflow.splitlines()]
    commands = [line for line in lines if line.startswith("bakeoff ")]
    assert len(commands) >= 3
    for command in commands:
        for value in matrix:
            argv = command.replace("${{ matrix.lightning }}", value).split()[1:]
            args = build_parser().parse_args(argv)
            assert args.command == "run" and args.task == TASK and args.against


def against_native(
    user_env: UserEnvironment, adapter: str, results: Path, *, task: str = TASK, cwd: Path | None = None
) -> tuple[dict, str]:
    done = user_env.run(
        "-m", "harness.cli", "run", "--task", task, "--adapter", adapter, "--steps", "8",
        "--against", "native", "--results-dir", str(results), timeout=1800, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("verdict vs native:"))
    path = Path(next(line for line in done.stdout.splitlines() if line.startswith("results: ")).split()[1])
    return json.loads(path.read_text()), line


@pytest.mark.parametrize("adapter", ["lightning@2.1.4", pytest.param("flash", marks=pytest.mark.slow)])
def test_isolated_adapters_import_the_plugin_installed_editable_and_not(user_env, tmp_path, adapter):
    records = {}
    for editable in (False, True):
        user_env.install(editable=editable)
        result, line = against_native(user_env, adapter, tmp_path)
        assert "bitwise" in line and "holds" in line, line
        assert result["environment"]["isolated"]["name"] == adapter
        records[editable] = result["task"]["plugin"]
    # The same code, wherever it is installed from: the same identity (and so the same spec id).
    assert records[False]["code"] == records[True]["code"]
    # Not installed at all: an import path from the folder the user runs bakeoff in reaches the
    # isolated worker too (through BAKEOFF_PLUGIN_PATH, which the CLI sets to the current directory).
    user_env.pip("uninstall", "-y", "bakeoff-example")
    assert user_env.run("-c", "import bakeoff_example").returncode != 0
    result, line = against_native(user_env, adapter, tmp_path, task="bakeoff_example.tasks:Spirals",
                                  cwd=user_env.source)  # fmt: skip
    assert "bitwise" in line and "holds" in line, line
    plugin = result["task"]["plugin"]
    assert (plugin["origin"], plugin["distribution"]) == ("import path", None)
    assert plugin["source_digest"] == records[True]["source_digest"]


def test_an_environment_sharing_with_a_bare_path_line_misses_editable_installs(user_env):
    """Why the shared .pth uses site.addsitedir: a bare path line never reads the folder's own .pth files."""
    user_env.install(editable=True)
    site = user_env.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    assert user_env.run("-c", "import bakeoff_example").returncode == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envs, "BUILD_ROOT", user_env.build_root)
        spec = envs.EnvironmentSpec(name="sharing-check", requirements=(), shared_site_packages=site)
        built = envs.ensure_built(spec)
    probe = [str(built.python), "-c", "import bakeoff_example, torch"]
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    assert subprocess.run(probe, capture_output=True, env=clean, timeout=300).returncode == 0
    pth = built.site_packages / envs.SHARED_PTH
    original = pth.read_text()
    try:
        pth.write_text(site + "\n")  # the old mechanism
        failed = subprocess.run(probe, capture_output=True, text=True, env=clean, timeout=300)
        assert failed.returncode != 0 and "No module named 'bakeoff_example'" in failed.stderr
    finally:
        pth.write_text(original)
