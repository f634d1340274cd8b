"""The public namespace: ``from bakeoff import ...`` gives the harness's own objects, and importing is cheap."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import bakeoff
from tests.conftest import REPO_ROOT


def test_every_export_resolves_to_the_object_the_harness_uses():
    import importlib

    assert sorted(bakeoff.__all__) == sorted(bakeoff._EXPORTS) and len(set(bakeoff.__all__)) == len(bakeoff.__all__)
    for name, module in bakeoff._EXPORTS.items():
        assert getattr(bakeoff, name) is getattr(importlib.import_module(module), name), name
    contract = {"Task", "Adapter", "Request", "Job", "Probe", "Unsupported", "Tolerance", "OptimizerRecipe"}
    assert contract <= set(dir(bakeoff))
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = bakeoff.Nope


@pytest.mark.parametrize("module", ["bakeoff", "bakeoff.pytest_plugin", "harness.cli", "harness.registry"])
def test_importing_the_namespace_the_plugin_and_the_cli_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
