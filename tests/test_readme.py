"""The README's "Bring your own task / adapter" section, followed verbatim.

Every file block in the section (a code block whose first line is ``# file: PATH``) is written to
``PATH`` in a temporary folder, and every line of its ``sh`` blocks is run there, in order, by bash,
as a user would type it. ``pip``, ``bakeoff`` and ``pytest`` are those of a throwaway environment that
shares ``.venv``'s packages (harness.envs), so ``pip install`` never touches ``.venv``. Each command
must exit 0; ``bakeoff run --against`` exits 1 when a verdict is worse than declared, so the
section's claims are checked too. About a minute here (three worker processes and a pytest run).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness import envs
from tests.conftest import REPO_ROOT

SECTION = "## Bring your own task / adapter"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def section_blocks() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return [(match[1], match[2]) for match in BLOCK.finditer(text[start : end if end != -1 else None])]


def test_the_section_has_files_and_commands():
    blocks = section_blocks()
    files = [body.splitlines()[0] for kind, body in blocks if body.startswith("# file: ")]
    assert "# file: mymodel/mymodel/tasks.py" in files and "# file: mymodel/pyproject.toml" in files
    assert any(kind == "sh" for kind, _ in blocks)


def shim(folder: Path, name: str, command: list[str]) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(part) for part in command) + ' "$@"\n')
    path.chmod(0o755)


def test_the_readme_section_works_verbatim(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envs, "BUILD_ROOT", tmp_path / "envs")
        user = envs.ensure_built(envs.EnvironmentSpec(name="readme", requirements=()))
    bin_dir = user.python.parent
    shim(bin_dir, "pip", [sys.executable, "-m", "pip", "--python", str(user.python)])
    shim(bin_dir, "bakeoff", [str(user.python), "-m", "harness.cli"])
    shim(bin_dir, "pytest", [str(user.python), "-m", "pytest", "-p", "no:cacheprovider"])
    work = tmp_path / "work"
    work.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join([str(bin_dir), *(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)])
    environment = {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": str(REPO_ROOT),
        "BAKEOFF_ENVS_ROOT": str(tmp_path / "envs"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # build with the shared setuptools: no download needed
    }
    outputs = []
    for kind, body in section_blocks():
        first = body.partition("\n")[0]
        if first.startswith("# file: "):
            target = work / first.removeprefix("# file: ").strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
            continue
        if kind != "sh":
            continue
        for command in body.splitlines():
            if not command.strip() or command.lstrip().startswith("#"):
                continue
            done = subprocess.run(
                ["bash", "-c", command], cwd=work, env=environment, capture_output=True, text=True, timeout=1800
            )
            outputs.append((command, done.stdout))
            assert done.returncode == 0, f"$ {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ran = dict(outputs)
    assert "sine" in ran["bakeoff list"] and "of mymodel 0.1.0" in ran["bakeoff list"]
    verdict = next(line for line in ran[next(c for c in ran if "--against" in c)].splitlines() if "verdict" in line)
    assert verdict.startswith("verdict vs native: bitwise (20 steps, identical weights)") and "holds" in verdict
    assert "2 passed" in ran["pytest -q mymodel/tests"]
