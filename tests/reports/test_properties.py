"""Property tests on the report builder over random result sets (failed runs, single runs, missing adapters, ties).

The records are built exactly as MLflow would hold them (``records_from_results``, checked against a real
store in ``test_citable.py``) so each example costs milliseconds instead of a tracking-store round trip.
"""

from __future__ import annotations

import json
import random

from hypothesis import given
from hypothesis import strategies as st

from harness.stats import compare_medians as compare_ci
from harness.stats import median_ci
from reports import render
from reports.build import assemble, verify_report, write_report
from reports.source import RunRecord, records_from_results
from tests.reports.synthetic import make_result, spec

SAMPLES = 64
ORIGIN = {"suite": "prop", "experiment": "bakeoff-prop", "tracking_uri": "offline"}
# Few distinct values, so ties are common; plus arbitrary positive durations.
STEP_US = st.one_of(st.sampled_from([100.0, 100.0, 150.0, 1000.0]), st.floats(1.0, 1e6, allow_nan=False))


@st.composite
def result_sets(draw):
    adapters = draw(st.lists(st.sampled_from(["native", "lightning", "keras"]), min_size=1, max_size=3, unique=True))
    task = draw(st.sampled_from(["digits", "scaling"]))
    results = []
    for adapter in adapters:
        modes = ["aligned", "defaults"] if adapter == "lightning" and draw(st.booleans()) else ["aligned"]
        for mode in modes:
            for repeat in range(draw(st.integers(1, 3))):
                fields = {"adapter": adapter, "mode": mode, "repeat": repeat, "task": task,
                          "precision": draw(st.sampled_from(["fp32", "fp32", "bf16-mixed"])),
                          "world_size": draw(st.sampled_from([1, 1, 2])),
                          "grad_accum": draw(st.sampled_from([1, 1, 2]))}
                if task == "scaling":
                    fields["options"] = {"width": draw(st.sampled_from([16, 64]))}
                steps = draw(st.integers(1, 8))
                fields["steps"] = steps
                status = draw(st.sampled_from(["ok", "ok", "ok", "failed", "unsupported"]))
                step_us = draw(st.lists(STEP_US, min_size=steps, max_size=steps))
                losses = draw(st.lists(st.floats(0.0, 10.0), min_size=steps, max_size=steps))
                results.append(make_result(spec(**fields), status=status, step_us=step_us, losses=losses,
                                           warmup=draw(st.integers(0, 3)), launch_ns=1_763_000_000_000_000_000))
    return results


def _intervals(report):
    for table in report.tables.values():
        for row in table.rows:
            for column in table.columns:
                if column.low and row.get(column.key) is not None and row.get(column.low) is not None:
                    yield table.name, column.key, row[column.low], row[column.key], row[column.high]


@given(result_sets())
def test_random_result_sets_never_crash_and_every_ci_contains_its_estimate(tmp_path_factory, results):
    records = records_from_results(results)
    report = assemble(records, ORIGIN, samples=SAMPLES)
    render.markdown(report), render.html_page(report)
    json.loads(render.json_text(report))  # allow_nan=False: no NaN or inf reaches the JSON
    for table, column, low, value, high in _intervals(report):
        assert low <= value <= high, (table, column, low, value, high)
    for row in report.tables["overhead"].rows:
        if row["adapter"] == "native" and row["mode"] == "aligned" and row.get("median_step_us") is not None:
            assert row["ratio"] == 1.0 and row["test_verdict"] == "reference"
    folder = write_report(report, tmp_path_factory.mktemp("prop"))
    assert verify_report(folder) == (report.report_id, [])


@given(st.lists(st.lists(STEP_US, min_size=1, max_size=12), min_size=1, max_size=4))
def test_the_median_ci_contains_the_median_and_native_against_itself_contains_one(groups):
    estimate = median_ci(groups, samples=SAMPLES)
    assert estimate.low <= estimate.value <= estimate.high
    assert estimate.repeats == len(groups)
    ratio, difference = compare_ci(groups, groups, samples=SAMPLES)
    assert ratio.low <= 1.0 <= ratio.high and ratio.value == 1.0
    assert difference.low <= 0.0 <= difference.high


def _changed(records: list[RunRecord], how: int) -> list[RunRecord]:
    """A copy of the records with exactly one stored value changed."""
    data = [r.to_dict() for r in records]
    target = data[how % len(data)]
    kind = how % 3
    if kind == 0 and target["histories"].get("step_time_us"):
        step, value = target["histories"]["step_time_us"][-1]
        target["histories"]["step_time_us"][-1] = [step, value * 1.5 + 1.0]
    elif kind == 1 and target["histories"].get("loss"):
        step, value = target["histories"]["loss"][0]
        target["histories"]["loss"][0] = [step, value + 0.25]
    else:
        target["tags"]["bakeoff.weights_digest"] = "changed-" + str(target["tags"].get("bakeoff.weights_digest"))
    return [RunRecord.from_dict(d) for d in data]


def _content(records: list[RunRecord]) -> str:
    return json.dumps(sorted((r.to_dict() for r in records), key=lambda d: d["run_id"]), sort_keys=True)


@given(result_sets(), st.integers(0, 1000), st.randoms(use_true_random=False))
def test_report_id_changes_if_and_only_if_the_content_changes(results, how, rng: random.Random):
    records = records_from_results(results)
    first = assemble(records, ORIGIN, samples=SAMPLES, with_figures=False)
    shuffled = list(records)
    rng.shuffle(shuffled)
    # Same content in another order, selected another way, built at another time: same id.
    again = assemble(shuffled, {**ORIGIN, "selection": "run x"}, samples=SAMPLES, with_figures=False,
                     generated_at="2000-01-01 00:00:00 UTC")
    assert again.report_id == first.report_id
    changed = _changed(records, how)
    other = assemble(changed, ORIGIN, samples=SAMPLES, with_figures=False)
    assert (other.report_id == first.report_id) == (_content(changed) == _content(records))
