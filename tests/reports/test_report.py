"""Reports are built from MLflow only, and every figure they print is the one MLflow holds."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace

import pytest

from harness import ingest, store
from harness.cli import main
from harness.result import base_result, read_result, result_path, write_result
from harness.spec import Spec
from reports.build import build_report, content_id, write_report
from reports.render import fmt, mib
from reports.source import Selection

SUITE = "rep"
FIGURES = ("median_step_us", "final_loss", "eval_metric")
"""Figures the every-run table shows (throughput and the rest are in results.csv)."""


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A native run, its repeat, an unsupported library and a failed run, logged to a SQLite store."""
    from harness.worker import run_inline

    folder = tmp_path_factory.mktemp("results")
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    native = Spec(task="digits", adapter="native", batch_size=64, steps=3, lr=0.05)
    run_inline(native, folder, warmup=1)
    run_inline(replace(native, repeat=1), folder, warmup=1)
    write_result(result_path(folder, replace(native, adapter="lightning")),
                 base_result(replace(native, adapter="lightning"), status="unsupported", error="not installed"))
    failed = replace(native, precision="bf16-mixed")
    write_result(result_path(folder, failed), base_result(failed, status="failed", error="worker exited with code 3"))
    results, problems = ingest.read_result_dir(folder)
    assert not problems and len(results) == 4
    report = ingest.log_results(results, results_dir=folder, suite=SUITE, uri=uri, command="ingest")
    return uri, report, folder


def _csv_rows(folder):
    return {row["spec_id"]: row for row in csv.DictReader(io.StringIO((folder / "results.csv").read_text()))}


def test_report_prints_exactly_the_figures_mlflow_holds(logged, tmp_path):
    uri, report, _ = logged
    built = build_report(uri, Selection(suite=SUITE))
    folder = write_report(built, tmp_path)
    rows = _csv_rows(folder)
    markdown = (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    client = store.client(uri)
    assert set(rows) == set(report.logged)
    for spec_id, run_id in report.logged.items():
        run = client.get_run(run_id)
        assert rows[spec_id]["status"] == run.data.tags["bakeoff.status"]
        assert rows[spec_id]["run_id"] == run_id
        if run.data.tags["bakeoff.status"] != "ok":
            assert rows[spec_id]["median_step_us"] == ""
            assert run.data.tags["bakeoff.error"] in markdown
            continue
        for key in (*FIGURES, "peak_memory_bytes"):
            assert float(rows[spec_id][key]) == run.data.metrics[key]  # full precision, no recomputation
        for key in FIGURES:
            assert fmt(run.data.metrics[key]) in markdown and fmt(run.data.metrics[key]) in page
        assert fmt(mib(run.data.metrics["peak_memory_bytes"])) in markdown
        assert rows[spec_id]["weights_digest"] == run.data.tags["bakeoff.weights_digest"]
        assert run.data.tags["bakeoff.weights_digest"][:12] in markdown
    document = json.loads((folder / "report.json").read_text())
    assert document["report_id"] == built.report_id == folder.name
    assert document["status_counts"] == {"failed": 1, "ok": 2, "unsupported": 1}
    assert document["parity_counts"] == {"bitwise": 1, "not-comparable": 1}


def test_html_is_one_self_contained_file_with_the_plots(logged, tmp_path):
    uri, _, _ = logged
    built = build_report(uri, Selection(suite=SUITE))
    folder = write_report(built, tmp_path)
    page = (folder / "report.html").read_text()
    assert sorted(built.figures) == ["loss-00-digits.png", "overhead-00-digits.png", "steptime-00-digits.png"]
    assert page.count('src="data:image/png;base64,') == len(built.figures)
    # Nothing loaded from elsewhere (links to sources are fine: they are not part of the page).
    assert not re.search(r'src="(https?:|//|[^"d#][^"]*)"', page) and "<link" not in page
    for name in built.figures:
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in (folder / "report.md").read_text()


def test_report_id_follows_the_content(logged, tmp_path):
    uri, report, folder = logged
    first = build_report(uri, Selection(suite=SUITE))
    recomputed = content_id(first.frame, first.records, first.tables, first.tasks, first.settings, first.claims)
    assert build_report(uri, Selection(suite=SUITE)).report_id == first.report_id == recomputed
    by_parent = build_report(uri, Selection(run_id=report.parent_run_id))
    assert by_parent.report_id == first.report_id  # the same runs, whichever way they were selected
    # A rerun of a spec (new content, same spec id) supersedes the old run: the table and id change.
    native = next(r for r in report.logged if read_result(folder / f"{r}.json")["spec"]["repeat"] == 1)
    changed = read_result(folder / f"{native}.json")
    changed["summary"]["median_step_us"] += 1.0
    changed["timing"]["launch_wall_ns"] += 10**12
    again = ingest.log_results([changed], results_dir=folder, suite=SUITE, uri=uri, command="ingest")
    assert native in again.logged
    updated = build_report(uri, Selection(suite=SUITE))
    assert updated.report_id != first.report_id
    row = updated.frame.set_index("spec_id").loc[native]
    assert row["median_step_us"] == changed["summary"]["median_step_us"]
    assert len(updated.frame) == len(first.frame)


def test_report_command_writes_the_outputs_and_rejects_unknown_selections(logged, tmp_path, capsys):
    uri, _, _ = logged
    assert main(["report", "--suite", SUITE, "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (folder,) = tmp_path.iterdir()
    assert {p.name for p in folder.iterdir()} >= {
        "report.md", "report.html", "results.csv", "report.json", "raw.json", "steps.csv"}
    assert str(folder / "report.html") in out
    assert main(["report", "--experiment", "no-such-experiment", "--tracking-uri", uri]) == 2
    assert "no experiment 'no-such-experiment'" in capsys.readouterr().err
    assert main(["report", "--run-id", "0" * 32, "--tracking-uri", uri]) == 2


def test_native_rows_come_first_in_every_cell(logged):
    uri, _, _ = logged
    frame = build_report(uri, Selection(suite=SUITE)).frame
    fp32 = frame[frame["precision"] == "fp32"]
    assert list(fp32["adapter"]) == ["native", "native", "lightning"]
    assert list(fp32["repeat"]) == [0, 1, 0]


def test_fmt_prints_three_significant_figures_and_a_dash_for_missing():
    assert fmt(21765.376) == "21800"
    assert fmt(0.4345403912173672) == "0.435"
    assert fmt(float("nan")) == "–" and fmt(None) == "–"
