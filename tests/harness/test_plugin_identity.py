"""A plugin's code is part of its spec's identity: changed plugin code is a new spec, and resume reruns it.

The plugin is a copy of the worked example package (``examples/bakeoff-example``) in a temporary
folder, named by import path, so editing it changes nothing in the repository.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from harness import plugins, registry
from harness.cli import main
from harness.plugins import with_code_identity
from harness.spec import Spec
from tests.conftest import REPO_ROOT

TASK = "bakeoff_example.tasks:Spirals"
LOOP = "bakeoff_example.train:train"


@pytest.fixture
def example_copy(tmp_path, monkeypatch):
    """A private copy of the example package on the path; yields the package folder."""
    root = tmp_path / "plugin-src"
    shutil.copytree(REPO_ROOT / "examples" / "bakeoff-example" / "bakeoff_example", root / "bakeoff_example")
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "bakeoff_example" or m.startswith("bakeoff_example.")]:
        monkeypatch.delitem(sys.modules, name)
    registry.clear_caches()
    yield root / "bakeoff_example"
    registry.clear_caches()
    for name in [m for m in sys.modules if m == "bakeoff_example" or m.startswith("bakeoff_example.")]:
        del sys.modules[name]


def spirals(adapter: str = "native", **fields) -> Spec:
    values = {"batch_size": 32, "steps": 3, "lr": 0.1, **fields}
    return with_code_identity(Spec(task=TASK, adapter=adapter, **values))


def test_changing_a_plugins_source_changes_its_spec_identity(example_copy):
    before = spirals(LOOP)
    assert (
        before.task_code
        and before.adapter_code
        and before.task_code == plugins.identify(registry.load_task_class(TASK), target=TASK, origin="import path").code
    )
    assert spirals(LOOP) == before  # stable while nothing changes (importing wrote __pycache__: not hashed)
    train = example_copy / "train.py"
    train.write_text(train.read_text() + "\n# a comment is a change too: the file's bytes are hashed\n")
    after = spirals(LOOP)
    assert after.adapter_code != before.adapter_code and after.spec_id != before.spec_id
    # The whole top-level package is hashed (the task may import any of it), so the task's identity moved too.
    assert after.task_code != before.task_code
    (example_copy / "notes.txt").write_text("not source")  # only .py files are hashed
    assert spirals(LOOP) == after
    (example_copy / "helpers.py").write_text("X = 1\n")  # a new module is a change
    assert spirals(LOOP).spec_id != after.spec_id


def test_a_worker_refuses_code_that_is_not_the_code_its_spec_names(example_copy, inline):
    spec = spirals()
    tasks = example_copy / "tasks.py"
    tasks.write_text(tasks.read_text().replace("noise=0.2", "noise=0.25"))
    result = inline(spec)
    assert result["status"] == "failed"
    assert "the task's code changed since this spec was made" in result["error"]
    assert result["trajectory"]["losses"] == []  # nothing trained under the stale id
    fresh = inline(spirals())
    assert fresh["status"] == "ok" and fresh["spec_id"] != spec.spec_id
    assert fresh["task"]["plugin"]["code"] == fresh["spec"]["task_code"]


def test_resume_reruns_a_spec_whose_plugin_code_changed(example_copy, tmp_path, monkeypatch, capsys):
    """`bench` on a suite file: done specs are skipped; after a source edit the spec runs again under its new id."""
    suite = tmp_path / "plugin.toml"
    suite.write_text(f'name = "plugin"\n[[runs]]\ntask = "{TASK}"\nadapter = "{LOOP}"\nsteps = 3\nbatch_size = 32\n')
    results = tmp_path / "results"
    # The workers find the copy through the current directory, as a user's would.
    monkeypatch.chdir(example_copy.parent)
    monkeypatch.setenv(registry.PLUGIN_PATH_ENV, "")

    def bench() -> str:
        code = main(["bench", "--suite-file", str(suite), "--results-dir", str(results), "--no-tracking"])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    first = bench()
    assert "1 ok" in first and "(done earlier)" not in first
    assert "(done earlier)" in bench()  # nothing changed: resumed
    train = example_copy / "train.py"
    train.write_text(train.read_text().replace("step += 1", "step = step + 1"))
    third = bench()
    assert "(done earlier)" not in third and "1 ok" in third
    finished = sorted(path.name for path in results.glob("*.json"))
    assert len(finished) == 2  # the old result is kept under the old id, the new code got its own
