"""bakeoff's pytest plugin: a ``bakeoff`` fixture and a ``--bakeoff-results`` option.

Loaded automatically where bakeoff is installed (the ``pytest11`` entry point); elsewhere,
``pytest -p bakeoff.pytest_plugin``. Importing it costs nothing (no torch): everything heavy
is imported when a test first uses the fixture.

The session-scoped ``bakeoff`` fixture binds :mod:`bakeoff.testing`'s assertions to one results
folder for the whole session (``--bakeoff-results DIR`` to keep it; a temporary folder
otherwise), so a partner run by one test is found, not rerun, by the next::

    def test_reproduces_native(bakeoff):
        bakeoff.assert_parity("mypkg.tasks:MyTask", "lightning")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bakeoff", "bakeoff parity assertions")
    group.addoption(
        "--bakeoff-results",
        metavar="DIR",
        default=None,
        help="keep bakeoff's result files (and final weights) of this session in DIR (default: a temporary folder)",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    folder = config.getoption("bakeoff_results", None)
    return f"bakeoff: results in {folder}" if folder else None


class BakeoffSession:
    """:mod:`bakeoff.testing` with one results folder: ``assert_parity``, ``assert_spec_parity``,
    ``assert_overhead``, ``make_spec``."""

    def __init__(self, results_dir: Path) -> None:
        self.results_dir = results_dir

    def assert_parity(self, task: str, adapter: str = "native", **kwargs: Any):
        from bakeoff.testing import assert_parity

        kwargs.setdefault("results_dir", self.results_dir)
        return assert_parity(task, adapter, **kwargs)

    def assert_spec_parity(self, spec, **kwargs: Any):
        from bakeoff.testing import assert_spec_parity

        kwargs.setdefault("results_dir", self.results_dir)
        return assert_spec_parity(spec, **kwargs)

    def assert_overhead(self, task: str, adapter: str, **kwargs: Any):
        from bakeoff.testing import assert_overhead

        kwargs.setdefault("results_dir", self.results_dir / "cost")
        return assert_overhead(task, adapter, **kwargs)

    def make_spec(self, task: str, adapter: str = "native", **fields: Any):
        from bakeoff.testing import make_spec

        return make_spec(task, adapter, **fields)


@pytest.fixture(scope="session")
def bakeoff(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BakeoffSession:
    """bakeoff's parity and overhead assertions, all writing to this session's results folder."""
    chosen = request.config.getoption("bakeoff_results", None)
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("bakeoff-results")
    folder.mkdir(parents=True, exist_ok=True)
    return BakeoffSession(folder)
