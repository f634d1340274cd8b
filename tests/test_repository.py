"""The repository documents itself: no tracked file points at something outside it.

A reader who clones the repository has only what is in it. So no tracked file may send them to
a design file kept outside it, name a path of the machine the work was done on (the folder that
holds the checkout), or cite a scratch script or suite file under the temporary folder as the
source of a figure (commit it, reproduce it in the note, or say it was not kept).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import REPO_ROOT

OUTSIDE_DESIGN = ("." + "./shared", "shared/" + "DESIGN.md")
"""A design file beside the repository, not in it (spelt in two parts so this file does not match)."""
# Folders whose first level is shared by unrelated checkouts: go one level deeper for the workspace.
PERSONAL_ROOTS = {"home", "Users"}
SYSTEM_ROOTS = {"tmp", "var", "opt", "usr", "srv", "mnt", "root", "private"}
SKIPPED = {".venv", ".envs", ".git", "results", "mlruns", "mlartifacts", "__pycache__", ".hypothesis"}


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        return [REPO_ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):  # not a git checkout (an unpacked archive): walk it
        files = []
        for folder, subfolders, names in os.walk(REPO_ROOT):
            subfolders[:] = [d for d in subfolders if d not in SKIPPED and not d.startswith(".")]
            files += [Path(folder) / name for name in names]
        return files


def machine_paths(root: Path = REPO_ROOT) -> set[str]:
    """The checkout's own path, and the workspace folder that holds it when that is not a system one."""
    paths = {str(root)}
    parts = root.resolve().parts
    if len(parts) > 2 and parts[1] not in SYSTEM_ROOTS:
        depth = 3 if parts[1] in PERSONAL_ROOTS else 2
        if len(parts) > depth:
            paths.add("/".join(parts[:depth]).replace("//", "/") + "/")
    return paths


def scratch_sources() -> re.Pattern:
    scratch = re.escape(tempfile.gettempdir().rstrip("/") + "/")
    return re.compile(scratch + r"[\w./-]*\.(?:py|toml|sh|ipynb)\b")


def offending_lines(text: str, forbidden: set[str], scratch: re.Pattern) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        hits = [needle for needle in forbidden if needle in line] + scratch.findall(line)
        if hits:
            found.append(f"{number}: {', '.join(sorted(set(hits)))}")
    return found


def test_no_tracked_file_points_outside_the_repository():
    forbidden = set(OUTSIDE_DESIGN) | machine_paths()
    scratch = scratch_sources()
    problems = []
    files = tracked_files()
    assert len(files) > 50  # the listing worked
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (weights, figures) or gone from the working tree
        for line in offending_lines(text, forbidden, scratch):
            problems.append(f"{path.relative_to(REPO_ROOT)}:{line}")
    assert problems == [], "\n".join(problems[:40])


def test_the_check_sees_each_kind_of_outside_pointer():
    forbidden = set(OUTSIDE_DESIGN) | machine_paths(Path("/lab-example/wt/checkout"))
    assert "/lab-example/" in forbidden
    assert machine_paths(Path("/home/alice/code/bakeoff")) >= {"/home/alice/"}
    assert "/tmp/" not in machine_paths(Path("/tmp/x/bakeoff"))
    scratch = scratch_sources()
    temp = tempfile.gettempdir().rstrip("/")
    text = "\n".join([
        "The design is in " + OUTSIDE_DESIGN[0] + "/DESIGN.md.",
        "store sqlite:////lab-example/main/mlflow.db",
        f"Measured with `{temp}/bench/measure.py` (3 repeats).",
        f"results went to {temp}/bench/results",  # an output folder, not a source: allowed
        "`bakeoff bench --results-dir /shared/results/standard` on a cluster",  # allowed
    ])
    assert [line.split(":")[0] for line in offending_lines(text, forbidden, scratch)] == ["1", "2", "3"]
