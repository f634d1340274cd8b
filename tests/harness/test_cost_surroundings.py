"""The counting worker's surroundings: what lies around the repository, how long the results path is
and which shell started the pass must not reach its heap.

The known answer: where a child Python's next objects land once it has imported packages depends
on the listing of the folder it imports from and on its environment (objects per entry). Run the
old way (from the repository, with the caller's environment), planted junk files and extra
variables move them; run from a stage, they must not. Addresses are the mechanism behind the
instruction counts' rerun differences (harness.cost.surroundings), and they are read in
milliseconds instead of a valgrind pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harness.cost import instructions
from harness.cost.instructions import Run, no_address_randomization
from harness.cost.surroundings import PACKAGES, Stage, counting_environment

REPO = Path(__file__).resolve().parents[2]

COUNT = (  # where the next objects land, and how many blocks are in use, once the packages are imported
    "import gc, sys, adapters, harness, tasks; gc.collect(); "
    "print(sys.getallocatedblocks(), id(object()), id('a string of some size'.upper()), id([]))"
)


def fake_repository(root: Path, junk: int) -> Path:
    for name in PACKAGES:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"NAME = {name!r}\n")
    for index in range(junk):
        (root / f"scratch-{index}.txt").write_text("left lying around\n")
    return root


def heap(cwd: Path, env: dict[str, str]) -> str:
    """With address randomization off, as in the pass (with it on, 1 run in 40 here counted one block more)."""
    out = subprocess.run([sys.executable, "-c", COUNT], cwd=cwd, env=env, capture_output=True, text=True, check=True,
                         preexec_fn=no_address_randomization)
    return out.stdout.strip()


def caller_environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", **extra}


def staged_heap(repo: Path, results: Path, environ: dict[str, str]) -> str:
    log = results / "run-1" / "windows.jsonl"
    log.parent.mkdir(parents=True)
    with Stage.create(repo, {"cells": [], "protocol": {}}, {1: log}) as stage:
        env = counting_environment(environ, repo_root=repo, stage=stage.root, python=sys.executable)
        return heap(stage.root, env)


def test_junk_beside_the_packages_and_the_callers_shell_move_the_heap_unless_staged(tmp_path):
    clean = fake_repository(tmp_path / "clean", junk=0)
    messy = fake_repository(tmp_path / "messy", junk=3)

    def old_way(repo: Path, **extra: str) -> str:
        return heap(repo, caller_environment(PYTHONPATH=str(repo), **extra))

    # The known answer: both causes are visible the old way (one object or more per extra entry).
    # The planted variables are new ones: a caller's shell may already set OLDPWD or TERM, and
    # overwriting a value of similar length need not move anything (CI's shell did just that).
    planted = {"SOME_CALLERS_VARIABLE": "/home/someone/elsewhere", "ANOTHER_CALLERS_VARIABLE": "x" * 40}
    assert not set(planted) & set(os.environ)
    baseline = old_way(clean)
    assert old_way(clean) == baseline  # the count repeats for the same surroundings
    assert old_way(messy) != baseline
    assert old_way(clean, **planted) != baseline

    staged = staged_heap(clean, tmp_path / "r", caller_environment())
    assert staged_heap(clean, tmp_path / "r2", caller_environment()) == staged
    assert staged_heap(messy, tmp_path / "a-much-longer-results-folder", caller_environment()) == staged
    shell = caller_environment(**planted, OLDPWD="/home/someone/elsewhere", TERM="xterm-256color", _="/usr/bin/make")
    assert staged_heap(messy, tmp_path / "r3", shell) == staged


def test_the_stage_holds_the_packages_the_plan_and_each_runs_folders(tmp_path):
    logs = {1: tmp_path / "results" / "run-1" / "windows.jsonl", 2: tmp_path / "results" / "run-2" / "windows.jsonl"}
    for log in logs.values():
        log.parent.mkdir(parents=True)
    with Stage.create(REPO, {"cells": [], "protocol": {"rounds": 6}}, logs) as stage:
        assert sorted(os.listdir(stage.root)) == sorted([*PACKAGES, "plan.json", "runs"])  # whatever the runs
        assert (stage.root / "harness" / "cost" / "surroundings.py").is_file()
        stage.log_path(2).write_text("{}\n")  # the worker writes through the link into the results folder
        assert logs[2].read_text() == "{}\n"
        assert stage.workroot(1).is_dir() and stage.workroot(2).is_dir()
        assert len(str(stage.workroot(1))) == len(str(stage.workroot(2)))
        root = stage.root
    assert not root.exists()  # removed; the results folders stay
    assert logs[2].exists()


def test_a_missing_package_is_a_clear_error_and_leaves_no_stage(tmp_path):
    repo = fake_repository(tmp_path / "repo", junk=0)
    (repo / "kernels" / "__init__.py").unlink()
    (repo / "kernels").rmdir()
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("bakeoff-count-*"))
    with pytest.raises(FileNotFoundError, match="'kernels' is missing"):
        Stage.create(repo, {"cells": [], "protocol": {}}, {1: tmp_path / "windows.jsonl"})
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("bakeoff-count-*")) == before


def test_the_stage_links_every_top_level_package_the_project_ships():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    shipped = {name.split(".")[0] for name in config["tool"]["setuptools"]["packages"]}
    assert set(PACKAGES) == shipped


def test_the_workers_environment_keeps_configuration_and_drops_the_shell_and_secrets(tmp_path):
    environ = {
        "HOME": "/home/u",
        "KERAS_BACKEND": "torch",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": "/cache/hf",
        "BAKEOFF_PLUGIN_PATH": "/plugins",
        "LC_ALL": "C.UTF-8",
        "OLDPWD": "/somewhere",
        "PWD": "/work",
        "_": "/usr/bin/make",
        "TERM": "xterm",
        "SSH_AUTH_SOCK": "/tmp/agent",
        "MLFLOW_TRACKING_PASSWORD": "hunter2",
        "AWS_SECRET_ACCESS_KEY": "abc",
        "PATH": "/home/u/.venv/bin:/home/u/bin:/usr/bin",
        "PYTHONPATH": os.pathsep.join([str(REPO), ".", "/extra/lib"]),
    }

    stage = tmp_path / "stage"
    env = counting_environment(environ, repo_root=REPO, stage=stage, python="/venv/bin/python",
                               tools=["/opt/valgrind/bin/valgrind"])
    assert {k: env[k] for k in ("HOME", "KERAS_BACKEND", "OMP_NUM_THREADS", "HF_HOME", "BAKEOFF_PLUGIN_PATH",
                                "LC_ALL")} == {k: environ[k] for k in ("HOME", "KERAS_BACKEND", "OMP_NUM_THREADS",
                                                                        "HF_HOME", "BAKEOFF_PLUGIN_PATH", "LC_ALL")}
    for dropped in ("OLDPWD", "PWD", "_", "TERM", "SSH_AUTH_SOCK", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY"):
        assert dropped not in env
    assert env["PYTHONPATH"] == os.pathsep.join([str(stage), "/extra/lib"])  # the stage stands for the repository
    both = counting_environment({**environ, "BAKEOFF_PLUGIN_PATH": os.pathsep.join([str(REPO), "/plugins"])},
                                repo_root=REPO, stage=stage, python="/venv/bin/python")
    assert both["BAKEOFF_PLUGIN_PATH"] == "/plugins"  # the CLI's current folder, run from the repository: dropped
    only_repo = counting_environment({**environ, "BAKEOFF_PLUGIN_PATH": str(REPO)}, repo_root=REPO, stage=stage,
                                     python="/venv/bin/python")
    assert "BAKEOFF_PLUGIN_PATH" not in only_repo
    assert env["PATH"] == "/venv/bin:/opt/valgrind/bin:/usr/local/bin:/usr/bin:/bin"
    assert counting_environment({**environ, "PATH": "/other"}, repo_root=REPO, stage=stage, python="/venv/bin/python",
                                tools=["/opt/valgrind/bin/valgrind"]) == env
    missing = counting_environment(environ, repo_root=REPO, stage=stage, python="/venv/bin/python", tools=["valgrind"])
    assert missing["PATH"] == "/venv/bin:/usr/local/bin:/usr/bin:/bin"  # a bare name adds no "." to the search path


def test_each_run_is_launched_from_the_stage_with_its_own_log_and_scratch(tmp_path, monkeypatch, request):
    launched = []

    class FakeProcess:
        pid = 1

        def __init__(self, command, *, env, cwd, **kwargs) -> None:
            launched.append((command, env, cwd))

    monkeypatch.setattr(instructions.subprocess, "Popen", FakeProcess)
    monkeypatch.setenv("OLDPWD", "/somewhere/else")
    monkeypatch.chdir(tmp_path)
    runs = [Run(index=i, folder=Path("results") / f"run-{i}") for i in (1, 2)]  # as `--results-dir results` gives
    instructions.prepare_folders(runs)
    stage = Stage.create(REPO, {"cells": [], "protocol": {}}, {run.index: run.log for run in runs})
    request.addfinalizer(stage.close)
    instructions.launch(runs, stage, python=sys.executable, hash_seed=0)
    for run, (command, env, cwd) in zip(runs, launched, strict=True):
        assert cwd == stage.root
        assert env["PYTHONPATH"].split(os.pathsep)[0] == str(stage.root) and "OLDPWD" not in env
        assert command[command.index("--plan") + 1] == str(stage.plan_path)
        assert command[command.index("--log") + 1] == str(stage.log_path(run.index))
        assert command[command.index("--workroot") + 1] == str(stage.workroot(run.index))
        # the dumps land in the run's results folder, though the worker runs in the stage
        assert f"--callgrind-out-file={tmp_path / run.folder}/callgrind.out.%p" in command
