"""Cold start-up: the `startup` suite runs fresh processes, and its table splits what a user waits for."""

from __future__ import annotations

import json

import pytest

from harness import startup
from harness.result import base_result
from harness.suites import get_suite
from tests.conftest import small_spec


def test_the_startup_suite_measures_fresh_processes_for_every_main_adapter():
    suite = get_suite("startup", "cpu")
    assert suite.fresh_processes and suite.repeats == 3
    adapters = {spec.adapter for spec in suite.specs}
    assert "native" in adapters and {"lightning", "fastai", "keras", "hf"} <= adapters
    assert {spec.task for spec in suite.specs} == {"digits"} and all(s.world_size == 1 for s in suite.specs)
    assert len(suite.specs) == 3 * len({(s.adapter, s.mode) for s in suite.specs})


def result(adapter: str, repeat: int, *, startup_s: float | None, launch_s: float, library_s: float, import_s: float):
    spec = small_spec(adapter=adapter, repeat=repeat)
    record = base_result(spec, status="ok")
    record["timing"] = {"launch": "fresh" if startup_s is not None else "zygote", "adapter_import_s": import_s}
    record["summary"].update(launch_s=launch_s, library_startup_s=library_s)
    if startup_s is not None:
        record["summary"]["startup_s"] = startup_s
    return record


def test_the_table_takes_medians_over_fresh_runs_only(tmp_path, capsys):
    runs = [
        result("lightning", 0, startup_s=8.0, launch_s=3.0, library_s=5.0, import_s=2.5),
        result("lightning", 1, startup_s=9.0, launch_s=3.5, library_s=5.5, import_s=2.7),
        result("lightning", 2, startup_s=20.0, launch_s=4.0, library_s=16.0, import_s=2.9),
        result("native", 0, startup_s=3.0, launch_s=2.8, library_s=0.2, import_s=0.0),
        # Forked from a zygote: no cold figure, so not in the table.
        result("native", 1, startup_s=None, launch_s=0.01, library_s=0.2, import_s=0.0),
    ]
    for index, record in enumerate(runs):
        (tmp_path / f"{index}.json").write_text(json.dumps(record))
    (tmp_path / "x.claim").write_text("host 1")
    rows = startup.rows(startup.read_results(tmp_path))
    assert [(r["adapter"], r["runs"]) for r in rows] == [("native", 1), ("lightning", 3)]
    lightning = rows[1]
    assert lightning["startup_s"] == 9.0 and (lightning["startup_min_s"], lightning["startup_max_s"]) == (8.0, 20.0)
    assert lightning["launch_s"] == 3.5 and lightning["library_import_s"] == 2.7
    assert lightning["library_startup_s"] == 5.5
    assert startup.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lightning" in out and "9.00 (8.00-20.00)" in out


@pytest.mark.parametrize("make_folder", [False, True])
def test_no_folder_or_no_fresh_runs_is_a_one_line_error(tmp_path, capsys, make_folder):
    folder = tmp_path / "startup"
    if make_folder:
        folder.mkdir()
    assert startup.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness.startup: error: ") and err.count("\n") == 1
