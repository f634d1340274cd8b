"""Shared fixtures: hypothesis profiles, a slow marker gate, in-process and subprocess runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from harness.spec import Spec

# CI profile: few examples, no deadline (a training run takes a variable ~0.1-1 s on a shared
# 2-core machine). `make test-deep` selects the deep profile.
settings.register_profile(
    "ci", max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "deep", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS = REPO_ROOT / "tests" / "plugins"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with `make test-deep` (--run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def private_peak_cache(tmp_path_factory):
    """Device peaks measured while tests load the machine must not land in the checkout's cache,
    where real runs would read them (an underestimated peak overstates MFU)."""
    folder = tmp_path_factory.mktemp("bakeoff-cache")
    previous = os.environ.get("BAKEOFF_CACHE_DIR")
    os.environ["BAKEOFF_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("BAKEOFF_CACHE_DIR", None)
    else:
        os.environ["BAKEOFF_CACHE_DIR"] = previous


@pytest.fixture(autouse=True)
def private_tracking_store(tmp_path, monkeypatch):
    """No test writes to the repository's MLflow store or report folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("BAKEOFF_REPORTS_OUT", str(tmp_path / "reports-out"))


def small_spec(**fields) -> Spec:
    """A few-step spec on a small task: fast enough for property tests."""
    values = {"task": "scaling", "adapter": "native", "batch_size": 16, "steps": 4, "lr": 0.05}
    values.update(fields)
    return Spec(**values)


@pytest.fixture
def inline(tmp_path):
    """Run a single-process spec in this process: ``inline(spec) -> result``."""
    from harness.worker import run_inline

    def run(spec: Spec, **kwargs):
        return run_inline(spec, tmp_path, **kwargs)

    run.results_dir = tmp_path
    return run


@pytest.fixture(scope="module")
def envs_build_root(tmp_path_factory):
    """Isolated environments built by this test module go to a scratch folder, not the repo's `.envs/`."""
    from harness import envs

    root = tmp_path_factory.mktemp("envs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(envs, "BUILD_ROOT", root)
        yield root


@pytest.fixture
def plugin_env(monkeypatch):
    """Put the test-only plugin distribution (fault adapters) on the path of spawned workers."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    import sys

    monkeypatch.syspath_prepend(str(PLUGINS))
    from harness import registry

    registry.clear_caches()
    yield
    registry.clear_caches()
    _ = sys


@pytest.fixture
def launch_environments(monkeypatch, request):
    """Launch instruction-pass runs with ``Popen`` faked: ``launch(runs, **options)`` returns each run's environment."""
    import sys

    from harness.cost import instructions
    from harness.cost.surroundings import Stage

    def launch(runs, **options) -> list[dict[str, str]]:
        launched = []

        class FakeProcess:
            pid = 1

            def __init__(self, command, *, env, **kwargs) -> None:
                launched.append(env)

        monkeypatch.setattr(instructions.subprocess, "Popen", FakeProcess)
        instructions.prepare_folders(runs)
        stage = Stage.create(REPO_ROOT, {"cells": [], "protocol": {}}, {run.index: run.log for run in runs})
        request.addfinalizer(stage.close)
        instructions.launch(runs, stage, python=sys.executable, **options)
        return launched

    return launch
