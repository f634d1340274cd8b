"""The report as a reader meets it: findings and scoreboard on the first screen, readable numbers,
folded long tables, an HTML small enough to open anywhere, and no path of the machine that built it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from reports import numbers
from reports.build import assemble, write_report
from reports.source import records_from_results
from tests import browser
from tests.conftest import REPO_ROOT
from tests.reports.synthetic import make_result, save, spec

ADAPTERS = ("native", "lightning", "lightning@2.1.4", "fastai", "keras", "hf", "flash")
TASKS = ("digits", "tabular", "charlm")
PUBLISHED = REPO_ROOT / "reports" / "published"


@pytest.fixture(scope="module")
def many_adapters(tmp_path_factory):
    """A synthetic suite the size of the standard one in adapters: 7 of them on 3 tasks, 3 repeats."""
    folder = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(11)
    results = []
    for repeat in range(3):
        for task in TASKS:
            for index, adapter in enumerate(ADAPTERS):
                modes = ("aligned",) if adapter == "native" else ("aligned", "defaults")
                for mode in modes:
                    step_us = list(rng.normal(1000 + 150 * index + (400 if mode == "defaults" else 0), 20, 16))
                    result = make_result(spec(task=task, adapter=adapter, mode=mode, steps=16, repeat=repeat),
                                         step_us=step_us)
                    save(folder, result)
                    results.append(result)
    records = records_from_results(results, folder)
    report = assemble(records, {"experiment": "bakeoff-reader", "suite": "reader", "store": "MLflow SQLite store"},
                      samples=200)
    return write_report(report, tmp_path_factory.mktemp("out")), report


def _first_screen(html: Path, shot: Path) -> dict:
    with browser.open_page(1400, 900) as page:
        page.goto(html.as_uri())
        page.wait_for("document.readyState === 'complete'", 60)
        page.screenshot(shot)
        return page.evaluate("""(() => {
            const box = id => { const e = document.getElementById(id); if (!e) return null;
                                const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; };
            const table = document.querySelector('#scoreboard table');
            const last = table ? table.querySelector('tbody tr:last-child').getBoundingClientRect() : null;
            return {findings: box('findings'), scoreboard: box('scoreboard'),
                    lastScoreboardRow: last ? last.bottom : null, viewport: window.innerHeight};
        })()""")


def test_findings_and_the_whole_scoreboard_are_on_the_first_screen(many_adapters, tmp_path):
    folder, _ = many_adapters
    boxes = _first_screen(folder / "report.html", tmp_path / "first-screen.png")
    assert boxes["findings"]["top"] < boxes["viewport"] / 4  # the report opens with what it found
    assert boxes["lastScoreboardRow"] is not None and boxes["lastScoreboardRow"] <= boxes["viewport"], boxes


def test_the_published_standard_report_opens_on_its_findings_and_scoreboard(tmp_path):
    published = sorted(PUBLISHED.glob("*standard*/report.json"))
    assert published, "no published standard report"
    for document in published:
        boxes = _first_screen(document.parent / "report.html", tmp_path / f"{document.parent.name}.png")
        assert boxes["findings"] and boxes["findings"]["top"] < boxes["viewport"] / 4, document.parent.name
        assert boxes["lastScoreboardRow"] and boxes["lastScoreboardRow"] <= boxes["viewport"], (document, boxes)


def test_numbers_have_three_significant_figures_and_cis_read_as_ranges():
    assert numbers.sig(115883.0) == "116000" and numbers.sig(0.000123456) == "0.000123"
    assert numbers.sig(561.4) == "561" and numbers.sig(999.7) == "1000" and numbers.sig(2.0) == "2.00"
    assert numbers.with_ci(561.4, 362.2, 769.0, "µs") == "561 µs (362–769)"
    assert numbers.with_ci(-0.923, -46.8, 33.1) == "−0.923 (−46.8 to 33.1)"  # no dash beside a minus sign
    assert numbers.signed_ci(425.0, -2892.0, 3488.0, "µs") == "+425 µs (−2890 to +3490)"
    assert numbers.p_value(5.8e-37) == "p < 0.001" and numbers.p_value(0.034) == "p = 0.034"


def test_long_tables_fold_away_and_markup_renders(many_adapters):
    folder, _report = many_adapters
    html = (folder / "report.html").read_text()
    markdown = (folder / "report.md").read_text()
    assert "<details><summary>" in html and "<details><summary>" in markdown
    assert "`" not in re.sub(r"<pre.*?</pre>", "", html, flags=re.S)  # backticks became <code>
    assert "<code>" in html
    first = markdown.split("## Scoreboard")[0]
    assert "## Findings" in first and "](#parity)" in first  # findings link to their evidence
    assert not re.search(r"\d\.\d{5,}", first)  # no six-digit figures in what people read first


def test_no_published_file_names_a_path_of_the_machine_that_built_it():
    markers = [str(REPO_ROOT), "/root/", "/home/", "/tmp/", "sqlite:///", "file:///"]
    for path in PUBLISHED.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".html", ".json", ".csv", ".txt"):
            text = path.read_text(encoding="utf-8", errors="replace")
            found = [marker for marker in markers if marker in text]
            assert not found, f"{path.relative_to(REPO_ROOT)} contains {found}"


def test_a_report_built_here_names_its_store_by_kind_and_experiment_only(many_adapters):
    folder, _report = many_adapters
    for name in ("report.md", "report.html", "report.json", "raw.json"):
        text = (folder / name).read_text()
        assert str(REPO_ROOT) not in text and "sqlite:///" not in text, name
    assert "MLflow SQLite store, experiment bakeoff-reader" in (folder / "report.md").read_text()
    assert json.loads((folder / "raw.json").read_text())["origin"]["store"] == "MLflow SQLite store"
