"""The MLflow UI as a dashboard: the printed link opens the run table with bakeoff's columns."""

from __future__ import annotations

import re

import pytest

from harness import ingest, store
from harness.cli import main
from tests import browser
from tests.harness.test_tracking import running_mlflow_server
from tests.reports.synthetic import make_result, save, spec


@pytest.fixture(scope="module")
def logged_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    results = []
    for repeat in range(2):
        for adapter in ("native", "lightning", "keras"):
            result = make_result(spec(adapter=adapter, repeat=repeat), step_us=[1000.0 + 100 * repeat] * 12)
            save(folder, result)
            results.append(result)
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ingest.log_results(results, results_dir=folder, suite="ui", uri=uri, command="ingest")
    return uri, root, results


def test_bakeoff_ui_prints_a_link_per_suite_to_its_run_table(logged_store, capsys):
    uri, _, _ = logged_store
    assert main(["ui", "--tracking-uri", uri, "--no-server", "--port", "5123"]) == 0
    out = capsys.readouterr().out
    experiment = store.client(uri).get_experiment_by_name("bakeoff-ui")
    assert f"bakeoff-ui: http://127.0.0.1:5123/#/experiments/{experiment.experiment_id}/runs?" in out
    assert "workflowType=machine_learning" in out and f"viewStateShareKey={store.VIEW_KEY}" in out
    assert main(["ui", "--port", "0", "--no-server"]) == 2


@pytest.mark.timeout(300)
def test_the_link_shows_adapter_mode_precision_parity_and_step_time_without_picking_columns(logged_store, tmp_path):
    uri, root, _results = logged_store
    experiment = store.client(uri).get_experiment_by_name("bakeoff-ui")
    with running_mlflow_server(uri, root) as base, browser.open_page(1400, 900) as page:
        # A first-time visitor: the UI would open on its GenAI page and pop its assistant panel open;
        # a reader arriving through the printed link lands on the run table.
        page.goto(base + "/health")
        page.evaluate("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')")
        page.goto(store.view_url(base, experiment.experiment_id))
        page.wait_for("document.querySelectorAll('.ag-row').length >= 6 && "
                      "document.body.innerText.includes('median_step_us')", 120)
        text = page.evaluate("document.body.innerText")
        page.screenshot(tmp_path / "mlflow-runs.png")
    for column in ("bakeoff.adapter", "bakeoff.mode", "bakeoff.precision", "bakeoff.parity", "median_step_us"):
        assert column in text, column
    names = set(re.findall(r"(?:native|lightning|keras)/aligned digits fp32 s0 r[01]", text))
    assert len(names) == 6  # every run name whole and distinct: the repeat shows
    assert "bitwise" in text  # the parity verdict is a visible column
    assert "ingest ui " not in text  # only result runs are listed: the invocation run is filtered out
