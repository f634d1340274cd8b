"""Paired cost records travel to the suite report: logged to MLflow, read back, tabled, verified.

One real small paired measurement (the planted two-``.item()`` adapter, so the sync count is known
exactly: 2 per step, native 0) is logged by ``bakeoff cost --experiment`` into the experiment that
also holds a result run; the report built from that experiment carries the paired and host-sync
tables, the attribution figure, and the records in ``raw.json``, and ``--verify`` re-derives them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness.cli import main
from harness.worker import run_inline
from reports.build import build_report, verify_report, write_report
from reports.render import markdown
from reports.source import Selection
from tests.conftest import PLUGINS, REPO_ROOT, small_spec

SUITE = "costrep"


def _cost(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PLUGINS)])}
    return subprocess.run([sys.executable, "-m", "harness", "cost", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_cost_records_land_in_the_report_of_their_experiment_and_verify(tmp_path, capsys):
    args = ["--adapters", "cost-item2", "--no-aa", "--modes", "aligned", "--passes", "paired", "--rounds", "6",
            "--steps", "30", "--warmup", "10", "--profile-rounds", "1", "--results-dir", str(tmp_path / "cost"),
            "--experiment", f"bakeoff-{SUITE}"]
    done = _cost(args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"mlflow: 1 cost records logged, 0 already there (experiment bakeoff-{SUITE})" in done.stdout
    again = _cost(args)  # the same record again: found in the store, not logged twice
    assert again.returncode == 0 and "mlflow: 0 cost records logged, 1 already there" in again.stdout, again.stdout

    results = tmp_path / "results"
    run_inline(small_spec(), results)
    run_inline(small_spec(adapter="cost-item2"), results)
    assert main(["ingest", str(results), "--suite", SUITE]) == 0
    capsys.readouterr()

    report = build_report(os.environ["MLFLOW_TRACKING_URI"], Selection(suite=SUITE))
    (row,) = report.tables["paired"].rows
    assert row["adapter"] == "cost-item2" and row["mode"] == "aligned" and row["status"] == "ok"
    assert row["clock"] == "wall" and row["overhead_us"] == row["wall_us"]  # no instruction record: wall decides
    assert row["overhead_low"] <= row["overhead_us"] <= row["overhead_high"] and row["rounds"] == 6
    (sync,) = report.tables["syncs"].rows
    assert sync["syncs_per_step"] == 2.0 and sync["native_syncs_per_step"] == 0.0
    assert sync["top_site"].startswith("item at ") and "bakeoff_cost_adapters.py" in sync["top_site"]
    attribution = report.cost[0].get("attribution") or {}  # plotted when the profile placed a non-zero difference
    plotted = attribution.get("placed_share") is not None and bool(attribution.get("paired_difference_us"))
    assert ("attribution-paired.png" in report.figures) == plotted
    text = markdown(report)
    assert "### Paired in-process cost" in text and "## Host syncs" in text
    scoreboard = {r["adapter"]: r for r in report.tables["scoreboard"].rows}
    assert scoreboard["cost-item2"]["syncs"] == "[2.00 aligned](#host-syncs)"

    folder = write_report(report, tmp_path / "out")
    raw = json.loads((folder / "raw.json").read_text())
    assert len(raw["cost"]) == 1 and raw["cost"][0]["kind"] == "paired"
    assert str(REPO_ROOT) not in (folder / "raw.json").read_text()
    report_id, problems = verify_report(folder)
    assert report_id == report.report_id and problems == []

    _rebuild_with_cost_measured_again(folder, tmp_path, capsys)

    # An edited cost figure in the raw data is caught: the tables and the report id no longer match.
    raw["cost"][0]["syncs"]["adapter"]["per_step"] = 1.0
    (folder / "raw.json").write_text(json.dumps(raw))
    _, problems = verify_report(folder)
    assert any("report id" in p for p in problems), problems


def _rebuild_with_cost_measured_again(folder, tmp_path, capsys):
    """``report --rebuild``: the written report's runs, with the cost records of a folder replacing
    those of the same kind and cell; the others stay; the result verifies and says it was rebuilt."""
    from harness.cost import record as cost_record

    (measured,) = [cost_record.read(path) for path in sorted((tmp_path / "cost").glob("paired-*.json"))]
    again = json.loads(json.dumps(measured))
    again["syncs"]["adapter"]["per_step"] = 3.0  # as if measured again with another result
    other = json.loads(json.dumps(measured))
    other["cell_id"] = "0123456789abcdef"  # a cell the report did not have
    records = tmp_path / "again"
    records.mkdir()
    cost_record.write(records / cost_record.file_name("paired", again["cell_id"]), again)
    out = tmp_path / "rebuilt"
    assert main(["report", "--rebuild", str(folder), "--cost-records", str(records), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    (rebuilt,) = list(out.iterdir())
    assert f"rebuilt from {folder.name} with 1 cost records" in line and rebuilt.name in line
    raw = json.loads((rebuilt / "raw.json").read_text())
    assert [r["syncs"]["adapter"]["per_step"] for r in raw["cost"]] == [3.0]  # replaced, not added
    assert len(raw["runs"]) == len(json.loads((folder / "raw.json").read_text())["runs"])
    assert rebuilt.name != folder.name  # other cost content, another report id
    text = (rebuilt / "report.md").read_text()
    assert f"rebuilt from report {folder.name}'s raw data with 1 cost records measured again" in text
    assert verify_report(rebuilt)[1] == []

    cost_record.write(records / cost_record.file_name("paired", other["cell_id"]), other)
    two_out = tmp_path / "two"
    assert main(["report", "--rebuild", str(folder), "--cost-records", str(records), "--out", str(two_out)]) == 0
    capsys.readouterr()
    (two,) = list((tmp_path / "two").iterdir())
    assert len(json.loads((two / "raw.json").read_text())["cost"]) == 2  # a new cell joins the one replaced

    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (
        (["--rebuild", str(folder)], "--rebuild REPORT_DIR and --cost-records DIR go together"),
        (["--rebuild", str(tmp_path / "nope"), "--cost-records", str(records)], "no such report folder"),
        (["--rebuild", str(folder), "--cost-records", str(empty)], "no cost records in"),
        (["--rebuild", str(folder), "--verify", str(folder), "--cost-records", str(records)], "alternatives"),
    ):
        assert main(["report", *args, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()  # nothing half-written
    (empty / "paired-broken.json").write_text("{")
    assert main(["report", "--rebuild", str(folder), "--cost-records", str(empty), "--out", str(tmp_path / "bad")]) == 2
    assert "not a readable cost record" in capsys.readouterr().err
